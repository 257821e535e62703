"""bench.transport_floor runs: a bare trio-websocket server and client process, real sockets on
loopback, their CPU read from /proc (the figures themselves live in bench/README.md)."""

from __future__ import annotations

import pytest

from bench import transport_floor


def test_one_level_measures_both_processes_and_the_clients_pace() -> None:
    row = transport_floor.measure(3, "listen+speak", 0.5)
    assert row["sessions"] == 3 and row["shape"] == "listen+speak"
    assert row["server_cpu_percent"] > 0 and row["client_cpu_percent"] > 0
    assert row["server_cpu_percent_per_session"] == pytest.approx(row["server_cpu_percent"] / 3, abs=0.01)
    assert 0 <= row["send_lag_p99_ms"] < 1000
    assert "| 3 | listen+speak |" in transport_floor.table([row])
