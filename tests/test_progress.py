"""Progress of long commands: one-line records in logs (rate, ETA), a tqdm bar in a terminal."""

from __future__ import annotations

import logging

from saca.progress import Progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_records_count_rate_and_eta_every_interval(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="saca.progress")
    p = Progress(100, "evaluate mini_r2r", unit="episode", every=30, initial=20, mode="log", clock=clock)
    for _ in range(10):
        clock.t += 2.0
        p.update(1)  # 10 episodes in 20 s: no record yet
    assert not caplog.records
    clock.t += 10.0
    p.update(2)  # 12 episodes in 30 s
    assert caplog.records[-1].getMessage() == ("evaluate mini_r2r: 32/100 episodes (32.0 %), 0.40 episode/s, "
                                               "ETA 2m50s, elapsed 30s")
    p.close()
    assert len(caplog.records) == 2 and "elapsed 30s" in caplog.records[-1].getMessage()
    p.close()  # closing twice logs once
    assert len(caplog.records) == 2


def test_iterate_counts_finished_bodies_and_closes(caplog):
    caplog.set_level(logging.INFO, logger="saca.progress")
    p = Progress(3, "sft", unit="step", mode="log", every=1e9)
    assert list(p.iterate(range(3))) == [0, 1, 2]
    assert p.n == 3 and caplog.records[-1].getMessage().startswith("sft: 3/3 steps (100.0 %)")
    q = Progress(None, "rft", unit="update", mode="off")
    for _ in q.iterate(range(2)):
        pass
    assert q.n == 2


def test_a_terminal_gets_a_tqdm_bar(capsys):
    p = Progress(5, "vln-ego train", unit="episode", mode="bar")
    for _ in p.iterate(range(5)):
        pass
    err = capsys.readouterr().err
    assert "vln-ego train" in err and "5/5" in err
