"""The registry's circuit breaker (server.registry.circuit): no answer opens it, calls then fail at once,
probes always ask, one ordinary call per interval is a trial, and any answer closes it."""

from __future__ import annotations

import threading

import pytest

from harness.processes import wait_until
from server.registry.circuit import Circuit, CircuitOpen


def in_thread(function):
    """What `function()` returns, or the exception it raises, when run on another thread."""
    outcome: list = []

    def run():
        try:
            outcome.append(function())
        except Exception as error:  # noqa: BLE001 — handed back to the test
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return outcome[0]


def test_a_closed_circuit_lets_every_call_through():
    circuit = Circuit("the store")
    circuit.admit()
    assert circuit.may_connect() and not circuit.is_open
    circuit.release()


def test_no_answer_opens_it_and_calls_then_fail_at_once():
    circuit = Circuit("the store", trial_every_s=60)
    circuit.admit()
    circuit.unanswered("ReadTimeoutError reading x")
    circuit.release()
    assert circuit.is_open and not circuit.may_connect() and circuit.reason == "ReadTimeoutError reading x"
    with pytest.raises(CircuitOpen, match=r"the store did not answer .* \(ReadTimeoutError reading x\); calls fail"):
        circuit.admit()
    assert isinstance(in_thread(circuit.admit), CircuitOpen)


def test_a_probe_always_asks_and_its_answer_closes_the_circuit():
    circuit = Circuit("the store", trial_every_s=60)
    circuit.unanswered("refused")
    circuit.admit(probe=True)
    assert circuit.may_connect()  # the probe may open a new connection...
    assert not in_thread(circuit.may_connect)  # ...no other thread may
    circuit.unanswered("timed out")  # the probe got no answer either
    assert not circuit.may_connect()
    circuit.release()
    circuit.admit(probe=True)
    circuit.answered()
    circuit.release()
    assert not circuit.is_open and in_thread(circuit.may_connect)
    circuit.admit()


def test_one_ordinary_call_per_interval_is_let_through_as_a_trial():
    circuit = Circuit("the store", trial_every_s=0.05)
    circuit.unanswered("refused")
    wait_until(lambda: _admitted(circuit), 5, "a trial to be let through once the interval has passed")
    assert circuit.may_connect()
    assert isinstance(in_thread(circuit.admit), CircuitOpen)  # one trial per interval
    circuit.release()
    assert not circuit.may_connect()


def test_an_answer_to_any_call_closes_it():
    circuit = Circuit("the store", trial_every_s=60)
    circuit.unanswered("refused")
    in_thread(circuit.answered)  # e.g. a call admitted before the circuit opened got its answer late
    assert not circuit.is_open
    circuit.admit()


def _admitted(circuit) -> bool:
    try:
        circuit.admit()
    except CircuitOpen:
        return False
    return True
