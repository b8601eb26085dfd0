"""Random batches of commands and legs through `decide`, checked against the reference model.

Two simulated partitions (a* accounts on 0, b* accounts on 1) each run the core over their
own in-memory store; the legs one emits wait in a queue until the other decides them. Every
command type is sent: accounts opened with and without limits, limits set, money moved at
once or held (posted in full or in part, voided, expired), invoices paid through the ledger
or an external channel (confirmed, failed), reversals of all of these, and aliases
registered (often one taken already) or named where an account goes. Record time is a
clock that mostly creeps forward, sometimes jumps over a UTC midnight and sometimes goes a
little backwards, so daily limits and hold deadlines meet both. Now and then a forged leg is
put on the legs topic by hand; and each partition's journal is checked to be one unbroken
chain.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import msgspec
from fake_store import PartitionStore, event_sum
from hypothesis import Phase, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from model import (
    AMOUNT_MAX,
    Answer,
    ModelLedger,
    ModelReceipt,
    Prediction,
    limits_of,
    model_entry_of,
    model_leg_of,
    model_receipt_of,
)

from ledger_stream.anomaly import AnomalyRules
from ledger_stream.core import Decision, Rules
from ledger_stream.messages import (
    COMMAND_ADAPTER,
    AccountState,
    Command,
    JournalEvent,
    JournalHead,
    Leg,
    Limits,
    Outcome,
    from_builtins,
    from_json,
    routed_by,
    to_json,
)
from ledger_stream.money import format_amount
from ledger_stream.readmodel import AccountView, ReadFold, account_key

DAY = 86_400_000
ACCOUNTS = {0: ("a0", "a1", "a2"), 1: ("b0", "b1", "b2")}
ALL_ACCOUNTS = ACCOUNTS[0] + ACCOUNTS[1]
# Mostly one currency, so that money moves; the others make currency_mismatch.
CURRENCIES = ("USD",) * 6 + ("EUR", "JPY")
SYSTEM = ("@world", "@transit")
# Few, so that most registrations find their alias taken; on the partition of their name.
ALIASES = {0: ("alias:a.one@x.org", "alias:a.two@x.org"), 1: ("alias:b.one@x.org",)}
KINDS = (
    ("open_account",) * 2
    + ("set_limits",) * 2
    + ("deposit",) * 2
    + ("withdraw",)
    + ("transfer",) * 3
    + ("close_account",)
    + ("hold",) * 2
    + ("post_hold",) * 2
    + ("void_hold", "expire_hold", "expire_hold")
    + ("pay_invoice",) * 2
    + ("confirm_payment", "fail_payment")
    + ("reverse",) * 2
    + ("register_alias",) * 2
)
MOVES = ("deposit", "withdraw", "transfer", "hold", "pay_invoice")
HOLD_COMMANDS = ("post_hold", "void_hold", "expire_hold")
# Commands whose money may travel to another partition: their repeats meet legs.
TRAVELLING = ("transfer", "pay_invoice", "post_hold", "confirm_payment", "reverse")
INVOICES = ("i1", "i2", "i3")
ACTIONS = ("deposit", "withdrawal", "transfer_out")
# What an account opened without limits gets (Rules.default_limits).
DEFAULT_LIMITS: tuple[dict[str, Any] | None, ...] = (
    None,
    None,
    {},
    {"daily_amount_max": {"transfer_out": 1_500}, "daily_count_max": {"withdrawal": 2}},
)


def partition_of(account: str) -> int:
    # System accounts are named only to be refused; give them a partition all the same. An
    # alias is on the partition of its name.
    return 1 if account.removeprefix("alias:").startswith("b") else 0


small_amounts = st.integers(min_value=1, max_value=300)
amounts = st.one_of(
    small_amounts,
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
# Small limits, so that they are met: 0 allows nothing, {} limits nothing but counts.
limits = st.fixed_dictionaries(
    {},
    optional={
        "transaction_amount_max": st.sampled_from([0, 100, 300, 1_000]),
        "daily_amount_max": st.dictionaries(
            st.sampled_from(ACTIONS), st.sampled_from([0, 200, 500, 1_500]), max_size=3
        ),
        "daily_count_max": st.dictionaries(
            st.sampled_from(ACTIONS), st.integers(min_value=0, max_value=3), max_size=3
        ),
    },
)
low_balances = st.one_of(st.none(), st.sampled_from([0, 50, 1_000]))
# Seconds: the clock moves in steps of up to a few seconds, so deadlines pass.
timeouts = st.one_of(st.none(), st.integers(min_value=1, max_value=6))


def same_command(draw: Any, command: dict[str, Any]) -> dict[str, Any]:
    """A repeat: same payload, perhaps another reply partition, metadata or amount spelling."""
    repeat = dict(command)
    repeat["reply_partition"] = draw(reply_partitions)
    repeat["metadata"] = draw(metadata)
    # Decimal strings are limited to 30 digits; larger amounts stay integers. Only amounts
    # with a currency are read as decimals (a post_hold's are minor units).
    amount = repeat.get("amount")
    if "currency" in repeat and amount is not None and abs(amount) < 10**20 and draw(st.booleans()):
        repeat["amount"] = format_amount(amount, repeat["currency"])
    return repeat


def conflicting_command(draw: Any, command: dict[str, Any]) -> dict[str, Any]:
    """The same command_id with another payload, on the same partition."""
    conflict = dict(command)
    if isinstance(conflict.get("amount"), int):
        conflict["amount"] += draw(st.integers(min_value=1, max_value=5))
    elif conflict["type"] == "open_account":
        conflict["overdraft_limit"] = conflict.get("overdraft_limit", 0) + 1
    elif conflict["type"] == "set_limits":
        conflict["overdraft_limit"] = (conflict.get("overdraft_limit") or 0) + 1
    elif "hold_id" in conflict:
        conflict["hold_id"] += "x"
    elif "target" in conflict:
        conflict["target"] += "x"
    elif "invoice_id" in conflict:
        conflict["invoice_id"] += "x"
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


def answer_of(reply: Any) -> Answer:
    result = reply.result
    limit = result.limit
    return Answer(
        command_id=result.command_id,
        status=result.status,
        code=result.code,
        duplicate=result.duplicate,
        type=result.type or "",
        account=result.account or "",
        partition=reply.partition,
        amount=result.amount,
        destination=result.destination,
        limit=None if limit is None else (limit.limit, limit.value, limit.used, limit.requested),
        metadata=None if result.metadata is None else tuple(sorted(result.metadata.items())),
    )


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = ModelLedger(partition_of)
        self.stores = self.new_stores(Rules())
        # Legs, and commands sent on (`Decision.forwards`), on their way to a partition.
        self.in_flight: dict[int, list[Leg | Command]] = {0: [], 1: []}
        self.delivered: list[Leg] = []
        self.sent: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
        self.journal: dict[str, JournalEvent] = {}
        self.receipts: dict[tuple[str, str], ModelReceipt] = {}  # by (payment id, entries)
        # The end of each partition's journal chain, as its events so far link up.
        self.chain_ends = {p: JournalHead() for p in (0, 1)}
        self.forged = 0
        self.credits: dict[str, Leg] = {}  # the credit legs emitted so far, by transfer id
        self.next_id = 0
        self.clock_ms = 0
        # The read models of each partition, folded from its decisions' journal events as the
        # projector folds them (re-sends included), a decision at a time.
        self.read_models: dict[int, dict[str, bytes]] = {0: {}, 1: {}}

    @staticmethod
    def new_stores(rules: Rules) -> dict[int, PartitionStore]:
        return {
            p: PartitionStore(is_local=lambda name, p=p: partition_of(name) == p, rules=rules)
            for p in (0, 1)
        }

    @initialize(
        opened=st.lists(
            st.tuples(
                st.sampled_from(ALL_ACCOUNTS),
                st.sampled_from(CURRENCIES),
                st.none() | st.none() | limits,
            ),
            unique_by=lambda opened: opened[0],
            min_size=4,
            max_size=6,
        ),
        default_limits=st.sampled_from(DEFAULT_LIMITS),
        payment_timeout_ms=st.sampled_from([2_000, 5_000]),
        before_midnight=st.integers(min_value=0, max_value=6_000),
    )
    def open_and_fund_most_accounts(
        self,
        opened: list[tuple[str, str, dict[str, Any] | None]],
        default_limits: dict[str, Any] | None,
        payment_timeout_ms: int,
        before_midnight: int,
    ) -> None:
        """Start from funded accounts on both partitions (some with limits of their own, some
        with the default ones), so that money moves from the start, a few seconds before a UTC
        midnight."""
        default = None if default_limits is None else from_builtins(default_limits, Limits)
        rules = Rules(default_limits=default, payment_timeout_ms=payment_timeout_ms)
        self.stores = self.new_stores(rules)
        self.model = ModelLedger(
            partition_of, default_limits=limits_of(default), payment_timeout_ms=payment_timeout_ms
        )
        self.clock_ms = 20_000 * DAY - before_midnight
        for name, currency, given in opened:
            partition = partition_of(name)
            commands = [
                {"type": "open_account", "account": name, "currency": currency},
                {"type": "deposit", "account": name, "currency": currency, "amount": 1_000},
            ]
            if given is not None:  # after the deposit, so that it counts from then on
                commands.append({"type": "set_limits", "account": name, "limits": given})
            for command in commands:
                self.next_id += 1
                command["command_id"] = f"c{self.next_id}"
                self.remember(partition, command)
            self.run(partition, [COMMAND_ADAPTER.validate_python(c) for c in commands])

    # Drawing inputs

    def remember(self, partition: int, command: dict[str, Any]) -> None:
        self.sent[partition].append(command)

    def draw_command(self, data: Any, partition: int) -> dict[str, Any]:
        sent = self.sent[partition]
        how = (
            data.draw(st.sampled_from(("fresh",) * 4 + ("repeat", "conflict"))) if sent else "fresh"
        )
        if how == "fresh":
            self.next_id += 1
            command = self.fresh_command(data.draw, partition, f"c{self.next_id}")
            self.remember(partition, command)
            return command
        # Commands that may send legs are repeated more often: their repeats meet legs.
        travelling = [c for c in sent if c["type"] in TRAVELLING]
        earlier = data.draw(
            st.sampled_from(travelling if travelling else sent) | st.sampled_from(sent)
        )
        if how == "repeat":
            return same_command(data.draw, earlier)
        return conflicting_command(data.draw, earlier)

    def fresh_command(self, draw: Any, partition: int, command_id: str) -> dict[str, Any]:
        """A new command for an account of `partition` (sometimes a system account), often
        aimed at what earlier commands left: a hold, a payment, a command to reverse."""
        own = ACCOUNTS[partition] * 4 + ALIASES[partition][:1]  # an alias: to be resolved
        if partition == 0:
            own += (SYSTEM[0],)
        kind = draw(st.sampled_from(KINDS))
        command: dict[str, Any] = {
            "type": kind,
            "command_id": command_id,
            "account": draw(st.sampled_from(own)),
            "reply_partition": draw(reply_partitions),
            "metadata": draw(metadata),
        }
        if kind in (*MOVES, "open_account"):
            command["currency"] = draw(st.sampled_from(CURRENCIES))
            known = self.model.accounts.get(command["account"])
            if known is not None and kind != "open_account" and draw(st.integers(0, 5)):
                command["currency"] = known.currency  # mostly the account's own
        if kind == "open_account":
            command["overdraft_limit"] = draw(overdraft_limits)
            if draw(st.integers(0, 2)) == 0:
                command["limits"] = draw(limits)
        if kind in ("open_account", "set_limits"):
            command["low_balance"] = draw(low_balances)
        if kind == "set_limits":
            command["limits"] = draw(st.none() | limits)
            command["overdraft_limit"] = draw(st.none() | st.just(0) | st.integers(0, 300))
        if kind == "register_alias":
            command["account"] = draw(st.sampled_from(ALIASES[partition]))
            command["target"] = draw(st.sampled_from((*ALL_ACCOUNTS, "never-opened")))
        if kind in MOVES:
            command["amount"] = draw(amounts)
        if kind in ("transfer", "hold", "pay_invoice"):
            command["destination"] = draw(
                st.sampled_from(ALL_ACCOUNTS * 4 + SYSTEM + ALIASES[0][:1] + ALIASES[1])
            )
        if kind == "hold":
            command["timeout_s"] = draw(timeouts)
        if kind == "pay_invoice":
            command["invoice_id"] = draw(st.sampled_from(INVOICES))
            claims = [(payer, i) for (p, payer, i) in self.model.invoices if p == partition]
            waiting = [
                (payer, i)
                for payer, i in claims
                if self.model.invoice_status(partition, payer, i) == "pending"
            ]
            if claims and draw(st.booleans()):  # an invoice paid, or being paid, again
                command["account"], command["invoice_id"] = draw(
                    st.sampled_from(waiting)
                    if waiting and draw(st.booleans())
                    else st.sampled_from(claims)
                )
            channel = draw(st.sampled_from((None, "ledger", "card", "card")))
            if channel is not None:
                command["channel"] = channel
            command["timeout_s"] = draw(timeouts)
        if kind in HOLD_COMMANDS:
            self.aim_at_a_hold(draw, partition, command)
        if kind in ("confirm_payment", "fail_payment"):
            self.aim_at_a_payment(draw, partition, command)
        if kind == "reverse":
            self.aim_at_an_original(draw, partition, command)
        return command

    def aim_at_a_hold(self, draw: Any, partition: int, command: dict[str, Any]) -> None:
        """Mostly a hold placed on this partition (pending, mostly), by the account that
        placed it; else an id that names no hold."""
        holds = [(i, hold) for (p, i), hold in self.model.holds.items() if p == partition]
        pending = [(i, hold) for i, hold in holds if hold.status == "pending"]
        if command["type"] == "expire_hold":  # mostly one that may expire
            pending = [(i, hold) for i, hold in pending if hold.deadline_ms is not None]
        choice = draw(st.integers(0, 9))
        if holds and choice:
            hold_id, hold = draw(st.sampled_from(pending if pending and choice > 3 else holds))
            command["hold_id"] = hold_id
            if choice != 1:
                command["account"] = hold.source
            if command["type"] == "post_hold":
                wrong = [a for a in (0, hold.amount + 1) if a <= AMOUNT_MAX]
                command["amount"] = draw(
                    st.none() | st.integers(1, hold.amount) | st.sampled_from(wrong)
                )
        else:
            every = [c["command_id"] for c in self.sent[partition]]
            command["hold_id"] = draw(st.sampled_from([*every, "nohold"]))
        if command["type"] == "expire_hold" and draw(st.booleans()):
            command["command_id"] = f"expire:{command['hold_id']}"  # as the timer names it

    def aim_at_a_payment(self, draw: Any, partition: int, command: dict[str, Any]) -> None:
        """Mostly an invoice a payer of this partition has paid or is paying."""
        claims = [(payer, i) for (p, payer, i) in self.model.invoices if p == partition]
        if claims and draw(st.integers(0, 5)):
            command["account"], command["invoice_id"] = draw(st.sampled_from(claims))
        else:
            command["invoice_id"] = draw(st.sampled_from(INVOICES))

    def aim_at_an_original(self, draw: Any, partition: int, command: dict[str, Any]) -> None:
        """Mostly a command known on this partition, reversed by the account the money would
        come back from (or by another it named); else any id."""
        sides = []
        for target, answer, names in self.model.answers(partition):
            side = answer.account if answer.type in ("deposit", "withdraw") else None
            sides.append((target, side or answer.destination))
            sides.extend((target, name) for name in names if name is not None)
        sides = [(target, side) for target, side in sides if side in ACCOUNTS[partition]]
        reversed_ = {target for (p, target) in self.model.reversals if p == partition}
        again = [(target, side) for target, side in sides if target in reversed_]
        if again and draw(st.integers(0, 3)) == 0:  # one reversed (or being reversed) already
            command["target"], command["account"] = draw(st.sampled_from(again))
        elif sides and draw(st.integers(0, 5)):
            command["target"], command["account"] = draw(st.sampled_from(sides))
        else:
            every = [c["command_id"] for sent in self.sent.values() for c in sent]
            command["target"] = draw(st.sampled_from([*every, "nothing"]))

    # Running a batch

    def run(self, partition: int, messages: list[Any]) -> None:
        """Decide `messages` on `partition` at the clock's record time, as the model says."""
        ts = self.clock_ms
        kept: list[Any] = []
        predictions: list[Prediction] = []
        for message in messages:
            kept.append(message)
            predictions.append(self.model.apply(partition, message, ts))
        if not kept:
            return
        decision = self.stores[partition].run(kept, ts)
        self.check_decision(decision, kept, predictions)
        self.check_chain(partition, decision)
        self.check_state_reads_back(decision)
        for reply in decision.results:
            note_event(
                f"result {reply.result.type} {reply.result.code or 'accepted'}"
                f"{' (repeat)' * reply.result.duplicate}"
            )
        for leg in decision.legs:
            note_event(f"leg {leg.type} {leg.command} {leg.code or ''}")
        for refused, _ in decision.refused:
            note_event(f"refused {getattr(refused.message, 'type', '')} leg")
        for event in decision.journal:
            first = self.journal.setdefault(event.entry_id, event)
            assert first == event, f"{event.entry_id} was re-emitted with other content"
        read = ReadFold(self.read_models[partition].get, AnomalyRules())
        for event in decision.journal:
            read.event(event)
        self.read_models[partition].update(read.out.writes)
        for receipt in decision.receipts:
            seen = model_receipt_of(receipt)
            first_receipt = self.receipts.setdefault((seen.payment_id, seen.invoice_id), seen)
            assert first_receipt == seen, f"the receipt of {seen.payment_id} was re-sent changed"
        for leg in decision.legs:
            self.in_flight[partition_of(leg.account)].append(leg)
            if leg.type == "credit":
                self.credits[leg.transfer_id] = leg
        for forward in decision.forwards:
            assert forward.timestamp_ms == ts, "a command sent on keeps its record time"
            self.in_flight[partition_of(routed_by(forward.message))].append(forward.message)
            note_event(f"forward {forward.message.type}")

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
        answers = [answer_of(reply) for reply in decision.results]
        assert answers == [p.answer for p in predictions if p.answer is not None]
        for reply in decision.results:
            assert (reply.result.reason is not None) == (reply.result.status == "rejected")
            assert (reply.result.limit is not None) == (reply.result.code == "limit_exceeded")
        entries = [model_entry_of(event) for event in decision.journal]
        assert entries == [entry for p in predictions for entry in p.entries]
        for event in decision.journal:
            assert event_sum(event) == 0, f"{event.entry_id} does not balance"
            for postings in (event.pending or [], event.released or []):
                assert sum(p.debit - p.credit for p in postings) == 0, event.entry_id
        legs = [model_leg_of(leg) for leg in decision.legs]
        assert legs == [leg for p in predictions for leg in p.legs]
        receipts = [model_receipt_of(receipt) for receipt in decision.receipts]
        assert receipts == [receipt for p in predictions for receipt in p.receipts]
        forwards = [forward.message for forward in decision.forwards]
        assert forwards == [command for p in predictions for command in p.forwards]

    def check_state_reads_back(self, decision: Decision) -> None:
        """What the writer stores is read back as it was written (the state log is JSON)."""
        for state in decision.accounts.values():
            assert from_json(to_json(state), AccountState) == state
        for outcome in decision.outcomes.values():
            assert from_json(to_json(outcome), Outcome) == outcome

    @rule(data=st.data(), partition=st.sampled_from((0, 1)), size=st.integers(1, 5))
    def decide_a_batch_of_commands(self, data: Any, partition: int, size: int) -> None:
        self.decide_commands(data, partition, size)

    @rule(data=st.data(), partition=st.sampled_from((0, 1)), size=st.integers(1, 5))
    def decide_another_batch_of_commands(self, data: Any, partition: int, size: int) -> None:
        """The same as `decide_a_batch_of_commands`: twice the chance of a batch of commands
        among the rules, so that holds, payments and reversals get their follow-ups."""
        self.decide_commands(data, partition, size)

    def decide_commands(self, data: Any, partition: int, size: int) -> None:
        commands = [self.draw_command(data, partition) for _ in range(size)]
        messages: list[Any] = [COMMAND_ADAPTER.validate_python(c) for c in commands]
        # Legs waiting for this partition join the batch, in their own order.
        waiting = self.in_flight[partition]
        taken = data.draw(st.integers(0, len(waiting)))
        legs, self.in_flight[partition] = waiting[:taken], waiting[taken:]
        positions = sorted(data.draw(st.integers(0, len(messages))) for _ in legs)
        for shift, (position, leg) in enumerate(zip(positions, legs, strict=True)):
            messages.insert(position + shift, leg)
        self.delivered.extend(leg for leg in legs if isinstance(leg, Leg))
        self.run(partition, messages)

    @rule(partition=st.sampled_from((0, 1)))
    def decide_the_legs_in_flight(self, partition: int) -> None:
        legs, self.in_flight[partition] = self.in_flight[partition], []
        self.delivered.extend(leg for leg in legs if isinstance(leg, Leg))
        if legs:
            self.run(partition, legs)

    @rule(data=st.data())
    def decide_a_stray_leg(self, data: Any) -> None:
        """A leg decided again, or one forged (as likely)."""
        if self.delivered and data.draw(st.booleans()):
            leg = data.draw(st.sampled_from(self.delivered))
            self.run(partition_of(leg.account), [leg])
        else:
            self.decide_a_forged_leg(data)

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

    @rule(data=st.data())
    def let_time_pass(self, data: Any) -> None:
        """Record time: seconds (so deadlines pass, often exactly), a little earlier (a record
        stamped before one decided already), to around the next UTC midnight, or days."""
        how = data.draw(st.sampled_from(("seconds", "seconds", "earlier", "midnight", "days")))
        if how == "seconds":
            step = data.draw(st.sampled_from([1, 500, 1_000, 2_000, 3_000]) | st.integers(1, 4_000))
        elif how == "earlier":
            step = -data.draw(st.integers(1, 3_000))
        elif how == "midnight":
            step = DAY - self.clock_ms % DAY + data.draw(st.integers(-2_000, 2_000))
        else:
            step = data.draw(st.sampled_from([DAY // 2, DAY, 3 * DAY]))
        self.clock_ms += step
        note_event(f"time: {how}")

    # Invariants

    def folded_journal(self) -> dict[str, tuple[int, int]]:
        """(debits, credits) posted per account, from the journal deduplicated by entry_id."""
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for event in self.journal.values():
            for posting in event.postings:
                totals[posting.account][0] += posting.debit
                totals[posting.account][1] += posting.credit
        return {name: (debits, credits) for name, (debits, credits) in totals.items()}

    def folded_pending(self) -> dict[str, tuple[int, int]]:
        """(debits, credits) pending per account: what holds reserved less what they released."""
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for event in self.journal.values():
            for postings, sign in ((event.pending or [], 1), (event.released or [], -1)):
                for posting in postings:
                    totals[posting.account][0] += sign * posting.debit
                    totals[posting.account][1] += sign * posting.credit
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
            assert (state.debits_pending, state.credits_pending) == (
                account.debits_pending,
                account.credits_pending,
            )
            assert state.debits_in_transit == account.sent
            assert limits_of(state.limits) == account.limits
            assert (state.day, state.used_amount, state.used_count) == (
                account.day,
                account.used_amount,
                account.used_count,
            )
            assert state.available >= 0
            assert state.debits_pending >= 0 and state.credits_pending >= 0

    @invariant()
    def stored_holds_equal_the_model(self) -> None:
        for (partition, hold_id), hold in self.model.holds.items():
            outcome = self.stores[partition].outcomes[f"cmd:{hold_id}"]
            assert outcome.hold is not None
            stored = outcome.hold
            assert (stored.source, stored.destination, stored.amount, stored.currency) == (
                hold.source,
                hold.destination,
                hold.amount,
                hold.currency,
            )
            assert (stored.deadline_ms, stored.invoice_id) == (hold.deadline_ms, hold.invoice_id)
            assert (stored.status, stored.posted) == (hold.status, hold.posted)

    @invariant()
    def the_journal_folds_to_the_stored_balances(self) -> None:
        folded = self.folded_journal()
        pending = self.folded_pending()
        for store in self.stores.values():
            for name, state in store.accounts.items():
                assert folded.get(name, (0, 0)) == (state.debits_posted, state.credits_posted)
                assert pending.get(name, (0, 0)) == (state.debits_pending, state.credits_pending)

    @invariant()
    def the_read_models_show_the_stored_balances(self) -> None:
        for partition, store in self.stores.items():
            models = self.read_models[partition]
            for name, state in store.accounts.items():
                raw = models.get(account_key(name))
                assert raw is not None, f"no read model of {name}"
                view = from_json(raw, AccountView)
                assert (view.debits_posted, view.credits_posted) == (
                    state.debits_posted,
                    state.credits_posted,
                ), name
                assert (view.debits_pending, view.credits_pending, view.status) == (
                    state.debits_pending,
                    state.credits_pending,
                    state.status,
                ), name

    @invariant()
    def all_accounts_with_world_and_transit_sum_to_zero(self) -> None:
        folded = self.folded_journal()
        assert sum(credits - debits for debits, credits in folded.values()) == 0
        pending = self.folded_pending()
        assert sum(credits - debits for debits, credits in pending.values()) == 0

    @invariant()
    def transit_holds_exactly_the_transfers_in_flight(self) -> None:
        debits, credits = self.folded_journal().get("@transit", (0, 0))
        assert credits - debits == sum(self.model.transit.values())
        # What @transit reserves: the pending holds to another partition.
        reserved = sum(
            hold.amount
            for (partition, _), hold in self.model.holds.items()
            if hold.status == "pending" and partition_of(hold.destination) != partition
        )
        assert self.folded_pending().get("@transit", (0, 0)) == (0, reserved)
        if not self.in_flight[0] and not self.in_flight[1]:
            assert credits - debits == 0
            for store in self.stores.values():
                assert all(state.debits_in_transit == 0 for state in store.accounts.values())
            if reserved == 0:  # every hold resolved and its legs done: @transit holds nothing
                assert all(hold.status != "posting" for hold in self.model.holds.values())

    @invariant()
    def every_hold_resolves_at_most_once(self) -> None:
        placed: dict[str, JournalEvent] = {}
        resolved: Counter[str] = Counter()
        for event in self.journal.values():
            if event.kind == "hold_placed":
                assert event.hold_id is not None and event.hold_id not in placed
                placed[event.hold_id] = event
        for event in self.journal.values():
            if event.kind in ("hold_posted", "hold_voided", "hold_expired"):
                assert event.hold_id in placed, f"{event.entry_id} resolves no hold"
                resolved[event.hold_id] += 1
                # It releases what the hold reserved, no more and no less.
                assert event.released == placed[event.hold_id].pending
                posted = sum(p.debit for p in event.postings)
                assert posted <= sum(p.debit for p in event.released or [])
        assert all(count == 1 for count in resolved.values())

    @invariant()
    def invoices_are_paid_at_most_once(self) -> None:
        payments: dict[tuple[str, str], set[str]] = defaultdict(set)
        for receipt in self.receipts.values():
            payments[(receipt.payer, receipt.invoice_id)].add(receipt.payment_id)
        assert all(len(ids) == 1 for ids in payments.values()), payments
        paid = {
            (payer, invoice)
            for (_, payer, invoice), claim in self.model.invoices.items()
            if claim.paid
        }
        assert set(payments) == paid

    @invariant()
    def commands_are_reversed_at_most_once(self) -> None:
        """Reversals of one command that did not come back (landed, or still in flight)."""
        standing: Counter[str] = Counter(
            event.reverses
            for event in self.journal.values()
            if event.kind == "reversal" and f"{event.command_id}:2" not in self.journal
        )
        assert all(count == 1 for count in standing.values()), standing

    @invariant()
    def an_alias_names_at_most_one_account(self) -> None:
        """One alias_registered event per alias, naming the account the model says, and the
        alias's claim on its partition says the same."""
        registered: dict[str, list[str | None]] = defaultdict(list)
        for event in self.journal.values():
            if event.kind == "alias_registered":
                assert event.postings == [] and event.currency == "", event.entry_id
                registered[event.account].append(event.target)
        assert all(len(targets) == 1 for targets in registered.values()), registered
        expected = {alias: target for (_, alias), target in self.model.aliases.items()}
        assert {alias: targets[0] for alias, targets in registered.items()} == expected
        for (partition, alias), target in self.model.aliases.items():
            assert partition_of(alias) == partition
            claim = self.stores[partition].outcomes[alias]
            assert claim.result is not None and claim.result.destination == target


LedgerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    # The explain phase takes minutes on a failing state machine and adds little here.
    phases=[phase for phase in Phase if phase is not Phase.explain],
)
TestLedgerAgainstModel = LedgerMachine.TestCase
