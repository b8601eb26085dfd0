"""The benchmark's workload and measurements: what every system in `bench --compare` is given."""

from __future__ import annotations

import itertools
import os

import pytest

from ledger_stream.measure import cpu_seconds, peak_rss_mib, percentiles, process_tree
from ledger_stream.partitioning import partition_of
from ledger_stream.workload import HOT_ACCOUNTS, Transfer, Workload


def first(workload: Workload, count: int = 4000) -> list[Transfer]:
    return list(itertools.islice(workload.transfers(), count))


def crossing(transfers: list[Transfer], partitions: int = 8) -> float:
    return sum(
        partition_of(t.source, partitions) != partition_of(t.destination, partitions)
        for t in transfers
    ) / len(transfers)


def test_a_seed_gives_the_same_transfers_and_another_seed_others() -> None:
    assert first(Workload(accounts=500, seed=3)) == first(Workload(accounts=500, seed=3))
    assert first(Workload(accounts=500, seed=3)) != first(Workload(accounts=500, seed=4))


def test_no_transfer_goes_to_its_own_account_and_amounts_are_positive() -> None:
    for workload in (Workload(accounts=50), Workload(hot=True), Workload(hot=True, cross=0.0)):
        transfers = first(workload)
        assert all(t.source != t.destination for t in transfers)
        assert all(1 <= t.amount <= 10_000 for t in transfers)
        assert [t.number for t in transfers] == list(range(len(transfers)))


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_the_cross_partition_share_is_what_was_asked(share: float) -> None:
    assert crossing(first(Workload(accounts=2000, cross=share))) == pytest.approx(share, abs=0.03)


def test_without_a_share_accounts_pair_at_random_so_most_transfers_cross() -> None:
    assert crossing(first(Workload(accounts=2000))) == pytest.approx(7 / 8, abs=0.03)


def test_hot_mode_puts_all_traffic_on_ten_accounts() -> None:
    workload = Workload(accounts=10_000, hot=True)
    names = {name for t in first(workload) for name in (t.source, t.destination)}
    assert names == set(workload.names[:HOT_ACCOUNTS])


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="accounts"):
        Workload(accounts=1)
    with pytest.raises(ValueError, match="cross"):
        Workload(cross=1.5)


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    samples = [n / 1000 for n in range(1, 101)]  # 1 ms .. 100 ms
    assert percentiles(samples) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([0.004]) == {"p50": 4.0, "p95": 4.0, "p99": 4.0, "max": 4.0}
    assert percentiles([])["p99"] == 0.0


def test_process_figures_come_from_proc() -> None:
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc here: the figures are zero")
    sum(i * i for i in range(300_000))  # some CPU of our own
    assert os.getpid() in process_tree(os.getpid())
    assert cpu_seconds([os.getpid()]) > 0
    assert peak_rss_mib(os.getpid()) > 1
    assert cpu_seconds([2**22 + 12345]) == 0.0  # a process that is not there counts nothing
