"""prefix-server's benchmarks, beside the package (see README.md here): `python -m benchmarks LEVEL`
and `python -m benchmarks.<name>`. Nothing under server/ imports them; they drive the server as users
do, in process (the engine level) or over HTTP against real `serve` processes.
"""
