"""Random batches of commands and legs through `decide`, checked against the reference model.

Two simulated partitions (a* accounts on 0, b* accounts on 1) each run the core over their
own in-memory store; the legs one emits wait in a queue until the other decides them. Now and
then a forged leg is put on the legs topic by hand; and each partition's journal is checked to
be one unbroken chain.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec
from fake_store import PartitionStore, event_sum
from hypothesis import Phase, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from model import AMOUNT_MAX, Answer, ModelLedger, Prediction, model_leg_of

from ledger_stream.core import Decision
from ledger_stream.messages import (
    COMMAND_ADAPTER,
    JournalEvent,
    JournalHead,
    Leg,
    from_builtins,
)
from ledger_stream.money import format_amount

ACCOUNTS = {0: ("a0", "a1", "a2"), 1: ("b0", "b1", "b2")}
ALL_ACCOUNTS = ACCOUNTS[0] + ACCOUNTS[1]
# Mostly one currency, so that money moves; the others make currency_mismatch.
CURRENCIES = ("USD",) * 6 + ("EUR", "JPY")
SYSTEM = ("@world", "@transit")
KINDS = (
    ("open_account",) * 2
    + ("deposit",) * 2
    + ("withdraw",)
    + ("transfer",) * 3
    + ("close_account",)
)


def partition_of(account: str) -> int:
    # System accounts are named only to be refused; give them a partition all the same.
    return 1 if account.startswith("b") else 0


small_amounts = st.integers(min_value=1, max_value=300)
amounts = st.one_of(
    small_amounts,
    small_amounts,
    st.sampled_from([100, 1_000, 1_100]),  # all of an opening deposit, to meet the limits
    st.sampled_from([0, -1, -250, AMOUNT_MAX, AMOUNT_MAX + 1, 2**63, 2**64, 10**29]),
)
overdraft_limits = st.one_of(
    st.just(0), st.integers(min_value=1, max_value=200), st.sampled_from([-1, AMOUNT_MAX + 1])
)
reply_partitions = st.one_of(st.none(), st.integers(min_value=0, max_value=3))
metadata = st.one_of(st.none(), st.just({"note": "x"}))


@st.composite
def fresh_commands(draw: Any, partition: int, command_id: str) -> dict[str, Any]:
    """A new command for an account of `partition` (sometimes a system account)."""
    own = (ACCOUNTS[partition] * 4 + (SYSTEM[0],)) if partition == 0 else ACCOUNTS[partition]
    kind = draw(st.sampled_from(KINDS))
    command: dict[str, Any] = {
        "type": kind,
        "command_id": command_id,
        "account": draw(st.sampled_from(own)),
        "reply_partition": draw(reply_partitions),
        "metadata": draw(metadata),
    }
    if kind != "close_account":
        command["currency"] = draw(st.sampled_from(CURRENCIES))
    if kind == "open_account":
        command["overdraft_limit"] = draw(overdraft_limits)
    if kind in ("deposit", "withdraw", "transfer"):
        command["amount"] = draw(amounts)
    if kind == "transfer":
        command["destination"] = draw(st.sampled_from(ALL_ACCOUNTS * 4 + SYSTEM))
    return command


def same_command(draw: Any, command: dict[str, Any]) -> dict[str, Any]:
    """A repeat: same payload, perhaps another reply partition, metadata or amount spelling."""
    repeat = dict(command)
    repeat["reply_partition"] = draw(reply_partitions)
    repeat["metadata"] = draw(metadata)
    # Decimal strings are limited to 30 digits; larger amounts stay integers.
    if "amount" in repeat and abs(repeat["amount"]) < 10**20 and draw(st.booleans()):
        repeat["amount"] = format_amount(repeat["amount"], repeat["currency"])
    return repeat


def conflicting_command(draw: Any, command: dict[str, Any]) -> dict[str, Any]:
    """The same command_id with another payload, on the same partition."""
    conflict = dict(command)
    if "amount" in conflict:
        conflict["amount"] += draw(st.integers(min_value=1, max_value=5))
    elif conflict["type"] == "open_account":
        conflict["overdraft_limit"] = conflict.get("overdraft_limit", 0) + 1
    else:
        others = [a for a in ACCOUNTS[partition_of(command["account"])] if a != command["account"]]
        conflict["account"] = draw(st.sampled_from(others))
    return conflict


HUGE = (AMOUNT_MAX + 1, 2**64)


def mismatches(sent: Any) -> Any:
    """One change that makes a returning leg differ from the credit leg `sent` (not in its
    payload digest: the model does not know digests; the table tests change those)."""
    others = [a for a in ALL_ACCOUNTS if a not in (sent.source, sent.destination)]
    return st.one_of(
        st.sampled_from([a for a in (sent.amount - 1, sent.amount + 1, 10**30) if a > 0]).map(
            lambda amount: {"amount": amount}
        ),
        st.sampled_from(others).map(lambda destination: {"destination": destination}),
        st.sampled_from([c for c in ("USD", "EUR", "JPY") if c != sent.currency]).map(
            lambda currency: {"currency": currency}
        ),
        st.sampled_from([None, "insufficient_funds", "gone"]).map(
            lambda code: {"type": "refund", "code": code}
        ),
    )


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = ModelLedger(partition_of)
        self.stores = {
            p: PartitionStore(is_local=lambda name, p=p: partition_of(name) == p) for p in (0, 1)
        }
        self.in_flight: dict[int, list[Leg]] = {0: [], 1: []}
        self.delivered: list[Leg] = []
        self.sent: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
        self.journal: dict[str, JournalEvent] = {}
        # The end of each partition's journal chain, as its events so far link up.
        self.chain_ends = {p: JournalHead() for p in (0, 1)}
        self.forged = 0
        self.credits: dict[str, Leg] = {}  # the credit legs emitted so far, by transfer id
        self.next_id = 0
        self.clock_ms = 1_000

    @initialize(
        opened=st.lists(
            st.tuples(st.sampled_from(ALL_ACCOUNTS), st.sampled_from(CURRENCIES)),
            unique_by=lambda pair: pair[0],
            min_size=4,
            max_size=6,
        )
    )
    def open_and_fund_most_accounts(self, opened: list[tuple[str, str]]) -> None:
        """Start from funded accounts on both partitions, so that money moves from the start."""
        for name, currency in opened:
            partition = partition_of(name)
            commands = [
                {"type": "open_account", "account": name, "currency": currency},
                {"type": "deposit", "account": name, "currency": currency, "amount": 1_000},
            ]
            for command in commands:
                self.next_id += 1
                command["command_id"] = f"c{self.next_id}"
                self.sent[partition].append(command)
            self.run(partition, [COMMAND_ADAPTER.validate_python(c) for c in commands])

    # Drawing inputs

    def draw_command(self, data: Any, partition: int) -> dict[str, Any]:
        sent = self.sent[partition]
        how = (
            data.draw(st.sampled_from(("fresh",) * 4 + ("repeat", "conflict"))) if sent else "fresh"
        )
        if how == "fresh":
            self.next_id += 1
            command = data.draw(fresh_commands(partition, f"c{self.next_id}"))
            sent.append(command)
            return command
        # Transfers are repeated more often: their repeats meet legs and refunds.
        transfers = [c for c in sent if c["type"] == "transfer"]
        earlier = data.draw(
            st.sampled_from(transfers if transfers else sent) | st.sampled_from(sent)
        )
        if how == "repeat":
            return same_command(data.draw, earlier)
        return conflicting_command(data.draw, earlier)

    # Running a batch

    def run(self, partition: int, messages: list[Any]) -> None:
        self.clock_ms += 1
        predictions = [self.model.apply(partition, message) for message in messages]
        decision = self.stores[partition].run(messages, self.clock_ms)
        self.check_decision(decision, messages, predictions)
        self.check_chain(partition, decision)
        for reply in decision.results:
            note_event(
                f"result {reply.result.code or 'accepted'}{' (repeat)' * reply.result.duplicate}"
            )
        for leg in decision.legs:
            note_event(f"leg {leg.type} {leg.code or ''}")
        for refused, _ in decision.refused:
            note_event(f"refused {getattr(refused.message, 'type', '')} leg")
        for event in decision.journal:
            first = self.journal.setdefault(event.entry_id, event)
            assert first == event, f"{event.entry_id} was re-emitted with other content"
        for leg in decision.legs:
            self.in_flight[partition_of(leg.account)].append(leg)
            if leg.type == "credit":
                self.credits[leg.transfer_id] = leg

    def check_chain(self, partition: int, decision: Decision) -> None:
        """New events continue the partition's chain; re-sent ones keep their first stamps."""
        end = self.chain_ends[partition]
        for event in decision.journal:
            if event.entry_id in self.journal:
                continue  # a re-send, compared with the first send in `run`
            assert (event.seq, event.prev_hash) == (end.seq + 1, end.hash), event.entry_id
            end = JournalHead(seq=end.seq + 1, hash=event.chain_hash())
            self.journal[event.entry_id] = event
        assert decision.head == end
        self.chain_ends[partition] = end

    def check_decision(
        self, decision: Decision, messages: list[Any], predictions: list[Prediction]
    ) -> None:
        refused = [message for message, p in zip(messages, predictions, strict=True) if p.refused]
        assert [incoming.message for incoming, _ in decision.refused] == refused
        assert all(reason for _, reason in decision.refused)
        expected_answers = [p.answer for p in predictions if p.answer is not None]
        answers = [
            Answer(
                command_id=reply.result.command_id,
                status=reply.result.status,
                code=reply.result.code,
                duplicate=reply.result.duplicate,
                type=reply.result.type or "",
                account=reply.result.account or "",
                partition=reply.partition,
            )
            for reply in decision.results
        ]
        assert answers == expected_answers
        for reply in decision.results:
            assert (reply.result.reason is not None) == (reply.result.status == "rejected")
        entries = [(event.entry_id, event.kind) for event in decision.journal]
        assert entries == [entry for p in predictions for entry in p.entries]
        for event in decision.journal:
            assert event_sum(event) == 0, f"{event.entry_id} does not balance"
        legs = [model_leg_of(leg) for leg in decision.legs]
        assert legs == [leg for p in predictions for leg in p.legs]

    @rule(data=st.data(), partition=st.sampled_from((0, 1)), size=st.integers(1, 5))
    def decide_a_batch_of_commands(self, data: Any, partition: int, size: int) -> None:
        commands = [self.draw_command(data, partition) for _ in range(size)]
        messages: list[Any] = [COMMAND_ADAPTER.validate_python(c) for c in commands]
        # Legs waiting for this partition join the batch, in their own order.
        waiting = self.in_flight[partition]
        taken = data.draw(st.integers(0, len(waiting)))
        legs, self.in_flight[partition] = waiting[:taken], waiting[taken:]
        positions = sorted(data.draw(st.integers(0, len(messages))) for _ in legs)
        for shift, (position, leg) in enumerate(zip(positions, legs, strict=True)):
            messages.insert(position + shift, leg)
        self.delivered.extend(legs)
        self.run(partition, messages)

    @rule(partition=st.sampled_from((0, 1)))
    def decide_the_legs_in_flight(self, partition: int) -> None:
        legs, self.in_flight[partition] = self.in_flight[partition], []
        self.delivered.extend(legs)
        if legs:
            self.run(partition, legs)

    @rule(data=st.data())
    def decide_a_leg_again(self, data: Any) -> None:
        if self.delivered:
            leg = data.draw(st.sampled_from(self.delivered))
            self.run(partition_of(leg.account), [leg])

    @rule(data=st.data())
    def decide_a_forged_leg(self, data: Any) -> None:
        """A leg no writer sent: a settle or refund of a transfer never posted, or one that
        differs from a transfer in flight, or a credit of more than any transfer moves."""
        self.forged += 1
        kind = data.draw(st.sampled_from(("settle", "refund")))
        leg: dict[str, Any] = {
            "type": kind,
            "transfer_id": f"f{self.forged}",  # commands are c<n>: never posted
            "source": data.draw(st.sampled_from(ALL_ACCOUNTS)),
            "destination": data.draw(st.sampled_from(ALL_ACCOUNTS)),
            "amount": data.draw(small_amounts),
            "currency": data.draw(st.sampled_from(CURRENCIES)),
            "code": "account_closed" if kind == "refund" else None,
        }
        how = data.draw(
            st.sampled_from(("never posted", "mismatched", "mismatched", "huge credit"))
        )
        pending = {sent.transfer_id for p in (0, 1) for sent in self.model.pending_transfers(p)}
        in_flight = [sent for transfer_id, sent in self.credits.items() if transfer_id in pending]
        if how == "mismatched" and in_flight:
            # A copy of a credit leg seen on the topic, sent back changed in one field.
            sent = data.draw(st.sampled_from(in_flight))
            leg = {**msgspec.structs.asdict(sent), "type": kind, "code": leg["code"]}
            leg.update(data.draw(mismatches(sent)))
        elif how == "huge credit":
            leg.update(type="credit", code=None, amount=data.draw(st.sampled_from(HUGE)))
        else:
            how = "never posted"
        note_event(f"forged leg: {how}")
        forged = from_builtins(leg, Leg)
        self.run(partition_of(forged.account), [forged])

    # Invariants

    def folded_journal(self) -> dict[str, tuple[int, int]]:
        """(debits, credits) per account, from the journal deduplicated by entry_id."""
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for event in self.journal.values():
            for posting in event.postings:
                totals[posting.account][0] += posting.debit
                totals[posting.account][1] += posting.credit
        return {name: (debits, credits) for name, (debits, credits) in totals.items()}

    @invariant()
    def stored_accounts_equal_the_model(self) -> None:
        for partition, store in self.stores.items():
            assert all(partition_of(name) == partition for name in store.accounts)
        stored = {
            name: state for store in self.stores.values() for name, state in store.accounts.items()
        }
        assert set(stored) == set(self.model.accounts)
        for name, account in self.model.accounts.items():
            state = stored[name]
            assert (state.currency, state.overdraft_limit) == (
                account.currency,
                account.overdraft_limit,
            )
            assert state.status == ("closed" if account.closed else "open")
            assert (state.debits_posted, state.credits_posted) == (account.debits, account.credits)
            assert (state.debits_pending, state.credits_pending) == (0, 0)
            assert state.debits_in_transit == account.sent
            assert state.balance >= -state.overdraft_limit

    @invariant()
    def the_journal_folds_to_the_stored_balances(self) -> None:
        folded = self.folded_journal()
        for store in self.stores.values():
            for name, state in store.accounts.items():
                assert folded.get(name, (0, 0)) == (state.debits_posted, state.credits_posted)

    @invariant()
    def all_accounts_with_world_and_transit_sum_to_zero(self) -> None:
        folded = self.folded_journal()
        assert sum(credits - debits for debits, credits in folded.values()) == 0

    @invariant()
    def transit_holds_exactly_the_transfers_in_flight(self) -> None:
        debits, credits = self.folded_journal().get("@transit", (0, 0))
        assert credits - debits == sum(self.model.transit.values())
        if not self.in_flight[0] and not self.in_flight[1]:
            assert credits - debits == 0
            for store in self.stores.values():
                assert all(state.debits_in_transit == 0 for state in store.accounts.values())


LedgerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    # The explain phase takes minutes on a failing state machine and adds little here.
    phases=[phase for phase in Phase if phase is not Phase.explain],
)
TestLedgerAgainstModel = LedgerMachine.TestCase
