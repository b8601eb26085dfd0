"""The read models, and the pure fold of journal events into them.

Per journal partition (whose events touch only accounts of that partition, besides the
`@` system accounts), the fold keeps, under string keys:

- `a|<account>`: the account's `AccountView` (balances posted and pending, limits, status);
- `h|<account>|<seq>`: one `HistoryItem` per event that touched the account (newest first
  is a reverse scan of the prefix);
- `t|<account>|<ms>|<seq>`: the same events by journal time, for a balance as of a time;
- `d|<account>|<YYYY-MM-DD>`: a `DaySummary` per UTC day with events;
- `x|<account>`: its anomaly state; `f|<account>|<seq>|<rule>`: its flags;
- `al|<alias>`: the account an alias names (on the alias's partition);
- `m|head`: the last event folded (`JournalHead`), which makes the fold idempotent: an event
  re-sent after a writer's crash has a `seq` already folded, and is skipped.

An account's journal time is its events' `timestamp_ms`, never earlier than its previous
event's, so history and time agree in order. `ReadFold` reads through `get` (the store) and
returns what to write, and the notifications and flags the events bring; the agent
(agents/projector.py) does the I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from msgspec import Meta

from ledger_stream.anomaly import AnomalyRules, AnomalyState, Flag, Movement, check
from ledger_stream.messages import (
    ALIAS_PREFIX,
    JournalEvent,
    JournalHead,
    Limits,
    WriterMessage,
    from_json,
    replaced,
    to_json,
)
from ledger_stream.notify import Notification

SEQ_DIGITS = 12
MS_DIGITS = 15
HEAD_KEY = "m|head"


class AccountView(WriterMessage, frozen=True):
    """An account as its journal events say, for reading."""

    currency: str
    status: Literal["open", "closed"] = "open"
    overdraft_limit: int = 0
    limits: Limits | None = None
    low_balance: Annotated[
        int | None, Meta(description="A low_balance notification below this balance")
    ] = None
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    opened_ms: int = 0
    seq: Annotated[int, Meta(description="Journal seq of the last event that touched it")] = 0
    timestamp_ms: Annotated[int, Meta(description="Journal time of that event")] = 0

    @property
    def balance(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What a debit may take: as the writer counts it (`AccountState.available`)."""
        return self.balance - self.debits_pending + self.overdraft_limit


class HistoryItem(WriterMessage, frozen=True):
    """One journal event as one account saw it."""

    seq: int
    entry_id: str
    command_id: str
    kind: str
    timestamp_ms: Annotated[int, Meta(description="Journal time (never before the previous)")]
    debit: int = 0
    credit: int = 0
    pending_debit: Annotated[int, Meta(description="Reserved (+) or released (-) by a hold")] = 0
    pending_credit: int = 0
    balance: Annotated[int, Meta(description="Posted balance after the event")] = 0
    pending_debits: Annotated[int, Meta(description="Pending debits after the event")] = 0
    pending_credits: int = 0
    counterparty: str | None = None
    hold_id: str | None = None
    invoice_id: str | None = None
    reverses: str | None = None
    metadata: dict[str, str] | None = None


class ActionTotals(WriterMessage, frozen=True, omit_defaults=False):
    count: int = 0
    debit: int = 0
    credit: int = 0


class DaySummary(WriterMessage, frozen=True, omit_defaults=False):
    """An account's UTC day: posted balance before its first event and after its last, and
    per event kind how many and how much was debited and credited."""

    day: str
    opening: int
    closing: int
    actions: dict[str, ActionTotals] = {}


def account_key(account: str) -> str:
    return f"a|{account}"


def history_prefix(account: str) -> str:
    return f"h|{account}|"


def history_key(account: str, seq: int) -> str:
    return f"h|{account}|{seq:0{SEQ_DIGITS}d}"


def time_prefix(account: str) -> str:
    return f"t|{account}|"


def time_key(account: str, ms: int, seq: int) -> str:
    return f"t|{account}|{ms:0{MS_DIGITS}d}|{seq:0{SEQ_DIGITS}d}"


def day_key(account: str, day: str) -> str:
    return f"d|{account}|{day}"


def flag_prefix(account: str) -> str:
    return f"f|{account}|"


def flag_key(account: str, seq: int, rule: str) -> str:
    return f"f|{account}|{seq:0{SEQ_DIGITS}d}|{rule}"


def anomaly_key(account: str) -> str:
    return f"x|{account}"


def alias_key(alias: str) -> str:
    return f"al|{alias}"


def utc_day(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).date().isoformat()


def seq_of(key: str) -> int:
    """The seq that ends a history or time key."""
    return int(key.rsplit("|", 1)[1])


# Kinds whose postings move money between an account and someone else; the others
# (opening, closing, limits, aliases) move none.
_SENT = "money_sent"
_RECEIVED = "money_received"
# Where an invoice's money lands on its payee: a payment or a card payment's posted hold
# within a partition, or the credit of one from another partition. (A refund carries the
# invoice too, back to the payer: not a payment.)
_PAYS_AN_INVOICE = ("invoice_payment", "hold_posted", "transfer_credit")


@dataclass
class Folded:
    """What folding some events asks to write, and the messages they bring."""

    writes: dict[str, bytes] = field(default_factory=dict)
    # Each with the seq of the event that brought it.
    notifications: list[tuple[int, Notification]] = field(default_factory=list)
    flags: list[tuple[int, Flag]] = field(default_factory=list)
    folded: int = 0
    skipped: int = 0  # events already folded (re-sent after a writer's crash)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (expected seq, seq found)


def folded_head(get: Callable[[str], bytes | None]) -> JournalHead:
    """The last journal event the read models `get` reads have folded."""
    raw = get(HEAD_KEY)
    return JournalHead() if raw is None else from_json(raw, JournalHead)


class ReadFold:
    """Folds one journal partition's events, in journal order, over the state `get` reads.

    >>> fold = ReadFold(lambda key: None, None)
    >>> fold.head.seq
    0
    """

    def __init__(self, get: Callable[[str], bytes | None], rules: AnomalyRules | None) -> None:
        self._get = get
        self.rules = rules
        self.out = Folded()
        self.head = folded_head(get)

    def read(self, key: str) -> bytes | None:
        """The value of `key`, as the events folded so far left it."""
        if key in self.out.writes:
            return self.out.writes[key]
        return self._get(key)

    def _put(self, key: str, value: bytes) -> None:
        self.out.writes[key] = value

    def event(self, event: JournalEvent) -> None:
        seq = event.seq
        if seq is None or seq <= self.head.seq:
            self.out.skipped += 1
            return
        if seq != self.head.seq + 1:
            self.out.gaps.append((self.head.seq + 1, seq))
        self.head = JournalHead(seq=seq, hash=event.chain_hash())
        self._put(HEAD_KEY, to_json(self.head))
        self.out.folded += 1
        if event.kind == "alias_registered":
            if event.target is not None and self.read(alias_key(event.account)) is None:
                self._put(alias_key(event.account), event.target.encode())
            return
        for account in accounts_of(event):
            self._account(event, account, seq)

    def _account(self, event: JournalEvent, account: str, seq: int) -> None:
        raw = self.read(account_key(account))
        before = None if raw is None else from_json(raw, AccountView)
        if before is None and event.kind != "account_opened":
            # Only possible for a journal that starts mid-way (retention): keep the account
            # anyway, in the event's currency.
            before = AccountView(currency=event.currency)
        moved = _moved(event, account)
        ms = event.timestamp_ms if before is None else max(event.timestamp_ms, before.timestamp_ms)
        after = _view_after(before, event, account, moved, seq, ms)
        self._put(account_key(account), to_json(after))
        counterparty = _counterparty(event, account)
        item = HistoryItem(
            seq=seq,
            entry_id=event.entry_id,
            command_id=event.command_id,
            kind=event.kind,
            timestamp_ms=ms,
            debit=moved.debit,
            credit=moved.credit,
            pending_debit=moved.pending_debit,
            pending_credit=moved.pending_credit,
            balance=after.balance,
            pending_debits=after.debits_pending,
            pending_credits=after.credits_pending,
            counterparty=counterparty,
            hold_id=event.hold_id,
            invoice_id=event.invoice_id,
            reverses=event.reverses,
            metadata=event.metadata,
        )
        self._put(history_key(account, seq), to_json(item))
        self._put(time_key(account, ms, seq), b"")
        opening = 0 if before is None else before.balance
        self._summarize(account, item, opening)
        self._notify(event, account, opening, after, item)
        if moved.debit != moved.credit and self.rules is not None:
            self._flag(event, account, item)

    def _summarize(self, account: str, item: HistoryItem, opening: int) -> None:
        day = utc_day(item.timestamp_ms)
        raw = self.read(day_key(account, day))
        summary = DaySummary(day, opening, opening) if raw is None else from_json(raw, DaySummary)
        totals = summary.actions.get(item.kind, ActionTotals())
        totals = ActionTotals(
            totals.count + 1, totals.debit + item.debit, totals.credit + item.credit
        )
        summary = replaced(
            summary, closing=item.balance, actions={**summary.actions, item.kind: totals}
        )
        self._put(day_key(account, day), to_json(summary))

    def _notify(
        self,
        event: JournalEvent,
        account: str,
        opening: int,
        after: AccountView,
        item: HistoryItem,
    ) -> None:
        """`opening`: the posted balance before the event."""

        def note(what: Any, amount: int | None, **details: Any) -> None:
            self.out.notifications.append(
                (
                    item.seq,
                    Notification(
                        id=f"{event.entry_id}:{what}:{account}",
                        type=what,
                        account=account,
                        currency=after.currency,
                        amount=amount,
                        balance=after.balance,
                        entry_id=event.entry_id,
                        command_id=event.command_id,
                        timestamp_ms=item.timestamp_ms,
                        details={k: v for k, v in details.items() if v is not None} or None,
                    ),
                )
            )

        net = item.credit - item.debit
        if net > 0:
            note(_RECEIVED, net, kind=event.kind, counterparty=item.counterparty)
        elif net < 0:
            note(_SENT, -net, kind=event.kind, counterparty=item.counterparty)
        threshold = after.low_balance
        # Crossed going down (not an account opened below its threshold).
        if threshold is not None and net < 0 and after.balance < threshold <= opening:
            note("low_balance", None, threshold=threshold)
        if event.kind == "hold_expired" and account == event.account:
            note("hold_expired", -item.pending_debit or None, hold_id=event.hold_id)
        if event.invoice_id is not None and net > 0 and event.kind in _PAYS_AN_INVOICE:
            note("invoice_paid", net, invoice_id=event.invoice_id, payer=item.counterparty)

    def _flag(self, event: JournalEvent, account: str, item: HistoryItem) -> None:
        assert self.rules is not None
        key = anomaly_key(account)
        raw = self.read(key)
        out = item.debit > item.credit
        if not out:  # money in changes nothing the rules keep (`check`): nothing to rewrite
            if raw is None:
                self._put(key, to_json(AnomalyState()))
            return
        state = None if raw is None else from_json(raw, AnomalyState)
        movement = Movement(
            entry_id=event.entry_id,
            command_id=event.command_id,
            account=account,
            counterparty=item.counterparty,
            amount=abs(item.credit - item.debit),
            direction="out" if out else "in",
            kind=event.kind,
            timestamp_ms=item.timestamp_ms,
        )
        state, flags = check(self.rules, state, movement)
        self._put(key, to_json(state))
        for flag in flags:
            self._put(flag_key(account, item.seq, flag.rule), to_json(flag))
        self.out.flags.extend((item.seq, flag) for flag in flags)


@dataclass(frozen=True)
class _Moved:
    debit: int = 0
    credit: int = 0
    pending_debit: int = 0
    pending_credit: int = 0


def accounts_of(event: JournalEvent) -> Iterator[str]:
    """The ledger accounts an event touches (not `@` system accounts), each once."""
    seen = {event.account} if not event.account.startswith("@") else set()
    if seen:
        yield event.account
    for postings in (event.postings, event.pending or (), event.released or ()):
        for posting in postings:
            name = posting.account
            if name not in seen and not name.startswith("@"):
                seen.add(name)
                yield name


def _moved(event: JournalEvent, account: str) -> _Moved:
    debit = sum(p.debit for p in event.postings if p.account == account)
    credit = sum(p.credit for p in event.postings if p.account == account)
    reserved = [p for p in event.pending or () if p.account == account]
    released = [p for p in event.released or () if p.account == account]
    return _Moved(
        debit,
        credit,
        sum(p.debit for p in reserved) - sum(p.debit for p in released),
        sum(p.credit for p in reserved) - sum(p.credit for p in released),
    )


def _view_after(
    before: AccountView | None, event: JournalEvent, account: str, moved: _Moved, seq: int, ms: int
) -> AccountView:
    view = before or AccountView(currency=event.currency, opened_ms=ms)
    changes: dict[str, Any] = {
        "debits_posted": view.debits_posted + moved.debit,
        "credits_posted": view.credits_posted + moved.credit,
        "debits_pending": view.debits_pending + moved.pending_debit,
        "credits_pending": view.credits_pending + moved.pending_credit,
        "seq": seq,
        "timestamp_ms": ms,
    }
    if account == event.account:  # the account whose settings the event carries
        if event.kind == "account_closed":
            changes["status"] = "closed"
        if event.overdraft_limit is not None:
            changes["overdraft_limit"] = event.overdraft_limit
        if event.limits is not None:
            changes["limits"] = event.limits
        if event.low_balance is not None:
            changes["low_balance"] = event.low_balance
    return replaced(view, **changes)


def _counterparty(event: JournalEvent, account: str) -> str | None:
    """The other ledger account of the movement: the event's account, seen from the other
    side of a transfer within the partition; otherwise the one the event names."""
    if account != event.account:
        return None if event.account.startswith("@") else event.account
    if event.counterparty is not None:
        return event.counterparty
    for posting in event.postings:
        if posting.account != account and not posting.account.startswith("@"):
            return posting.account
    return None


def is_alias(name: str) -> bool:
    return name.startswith(ALIAS_PREFIX)
