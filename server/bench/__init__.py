"""`prefix-server bench`: measures prefix-server against its baselines on real text.

- workload: texts (SST-2, TREC, MRPC), random tasks and their artifacts, seeded request streams;
- engine_level: the batcher and engine in process, plus the backbone-alone and seed baselines;
- http_level: servers as subprocesses driven by a closed- and open-loop load generator;
- memory: resident set size with 1, 100, 1,000 tasks against one backbone copy per task;
- report: JSON and Markdown tables.

Nothing here is imported by the server itself.
"""
