"""Every rejection code, once: its precedence and its reason in plain words.

`Code` is the one enumeration of the codes a result may carry. The core returns the first
that applies, in `PRECEDENCE` order (codes of one level in the order listed here); intake
answers records it cannot read before any of them. The messages and the
JSON Schemas take the codes from here, and a test keeps the README's table equal to it.
"""

from __future__ import annotations

from enum import StrEnum

from ledger_stream.money import AMOUNT_MAX, BALANCE_MAX


class Code(StrEnum):
    EXISTS_WITH_DIFFERENT_PAYLOAD = "exists_with_different_payload"
    ALIAS_NOT_FOUND = "alias_not_found"
    ACCOUNT_RESERVED = "account_reserved"
    INVALID_AMOUNT = "invalid_amount"
    AMOUNT_TOO_LARGE = "amount_too_large"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    ACCOUNT_EXISTS = "account_exists"
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_CLOSED = "account_closed"
    CURRENCY_MISMATCH = "currency_mismatch"
    HOLD_NOT_FOUND = "hold_not_found"
    PAYMENT_NOT_FOUND = "payment_not_found"
    ORIGINAL_NOT_FOUND = "original_not_found"
    HOLD_ALREADY_POSTED = "hold_already_posted"
    HOLD_VOIDED = "hold_voided"
    HOLD_EXPIRED = "hold_expired"
    INVOICE_ALREADY_PAID = "invoice_already_paid"
    INVOICE_PAYMENT_PENDING = "invoice_payment_pending"
    REVERSAL_OF_REVERSAL = "reversal_of_reversal"
    ALIAS_TAKEN = "alias_taken"
    NOT_REVERSIBLE = "not_reversible"
    ALREADY_REVERSED = "already_reversed"
    HOLD_NOT_EXPIRED = "hold_not_expired"
    AMOUNT_EXCEEDS_HOLD = "amount_exceeds_hold"
    BALANCE_NOT_ZERO = "balance_not_zero"
    TRANSFER_IN_TRANSIT = "transfer_in_transit"
    LIMIT_EXCEEDED = "limit_exceeded"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    OVERFLOW = "overflow"
    # Answered by intake, for records that are not commands of this partition.
    INVALID_COMMAND = "invalid_command"
    INVALID_CURRENCY = "invalid_currency"
    WRONG_PARTITION = "wrong_partition"

    @property
    def reason(self) -> str:
        return REASONS[self]


# The level each code is checked at: the lowest that applies is the answer. 0: intake, before
# the writer decides anything.
PRECEDENCE: dict[Code, int] = {
    Code.EXISTS_WITH_DIFFERENT_PAYLOAD: 1,
    Code.ALIAS_NOT_FOUND: 2,
    Code.ACCOUNT_RESERVED: 2,
    Code.INVALID_AMOUNT: 3,
    Code.AMOUNT_TOO_LARGE: 4,
    Code.ACCOUNTS_MUST_BE_DIFFERENT: 5,
    Code.ACCOUNT_EXISTS: 6,
    Code.ACCOUNT_NOT_FOUND: 7,
    Code.ACCOUNT_CLOSED: 8,
    Code.CURRENCY_MISMATCH: 9,
    Code.HOLD_NOT_FOUND: 10,
    Code.PAYMENT_NOT_FOUND: 10,
    Code.ORIGINAL_NOT_FOUND: 10,
    Code.HOLD_ALREADY_POSTED: 11,
    Code.HOLD_VOIDED: 11,
    Code.HOLD_EXPIRED: 11,
    Code.INVOICE_ALREADY_PAID: 11,
    Code.INVOICE_PAYMENT_PENDING: 11,
    Code.REVERSAL_OF_REVERSAL: 11,
    Code.ALIAS_TAKEN: 11,
    Code.NOT_REVERSIBLE: 12,
    Code.ALREADY_REVERSED: 13,
    Code.HOLD_NOT_EXPIRED: 14,
    Code.AMOUNT_EXCEEDS_HOLD: 14,
    Code.BALANCE_NOT_ZERO: 15,
    Code.TRANSFER_IN_TRANSIT: 15,
    Code.LIMIT_EXCEEDED: 16,
    Code.INSUFFICIENT_FUNDS: 17,
    Code.OVERFLOW: 18,
    Code.INVALID_COMMAND: 0,
    Code.INVALID_CURRENCY: 0,
    Code.WRONG_PARTITION: 0,
}

REASONS: dict[Code, str] = {
    Code.EXISTS_WITH_DIFFERENT_PAYLOAD: "this command_id was already used for another command",
    Code.ALIAS_NOT_FOUND: "no account is registered under the alias",
    Code.ACCOUNT_RESERVED: "accounts starting with '@' are system accounts, and ids starting "
    "with 'alias:' are aliases",
    Code.INVALID_AMOUNT: "amounts must be positive integers of minor units",
    Code.AMOUNT_TOO_LARGE: f"amounts may not exceed {AMOUNT_MAX} minor units",
    Code.ACCOUNTS_MUST_BE_DIFFERENT: "a transfer needs two different accounts",
    Code.ACCOUNT_EXISTS: "the account was already opened",
    Code.ACCOUNT_NOT_FOUND: "the account has not been opened",
    Code.ACCOUNT_CLOSED: "the account is closed",
    Code.CURRENCY_MISMATCH: "the currency is not the account's currency",
    Code.HOLD_NOT_FOUND: "no hold with this id was placed by this account",
    Code.PAYMENT_NOT_FOUND: "no payment through an external channel waits for this invoice",
    Code.ORIGINAL_NOT_FOUND: "no accepted command with this id moved money to or from this "
    "account on its partition (a transfer is reversed by its destination)",
    Code.HOLD_ALREADY_POSTED: "the hold was posted already",
    Code.HOLD_VOIDED: "the hold was voided",
    Code.HOLD_EXPIRED: "the hold expired (its deadline passed by record time)",
    Code.INVOICE_ALREADY_PAID: "the invoice was paid already",
    Code.INVOICE_PAYMENT_PENDING: "a payment of the invoice is waiting for its confirmation",
    Code.REVERSAL_OF_REVERSAL: "a reversal cannot be reversed",
    # Not which account: an alias is an email address or the like, and which account it
    # names is its owner's business.
    Code.ALIAS_TAKEN: "alias is registered to another account",
    Code.NOT_REVERSIBLE: "only accepted deposits, withdrawals, transfers and payments can be "
    "reversed",
    Code.ALREADY_REVERSED: "the command was reversed already",
    Code.HOLD_NOT_EXPIRED: "the hold has no deadline, or its deadline has not passed",
    Code.AMOUNT_EXCEEDS_HOLD: "the amount is more than the hold reserved",
    Code.BALANCE_NOT_ZERO: "an account can only be closed with a zero balance and no holds",
    Code.TRANSFER_IN_TRANSIT: "a transfer from the account has not landed yet; retry the close",
    Code.LIMIT_EXCEEDED: "the command would pass one of the account's limits",
    Code.INSUFFICIENT_FUNDS: "the debit exceeds the available balance plus the overdraft limit",
    Code.OVERFLOW: f"posted debits or credits would exceed {BALANCE_MAX}",
    Code.INVALID_COMMAND: "the message is not a valid command (see the dead-letter topic)",
    Code.INVALID_CURRENCY: "the currency is not a known ISO 4217 code",
    Code.WRONG_PARTITION: "the command was not keyed by its account",
}

# The codes a destination's writer sends back on a refund leg.
REFUND_CODES = (
    Code.EXISTS_WITH_DIFFERENT_PAYLOAD,
    Code.ACCOUNT_NOT_FOUND,
    Code.ACCOUNT_CLOSED,
    Code.CURRENCY_MISMATCH,
    Code.OVERFLOW,
)


def table() -> str:
    """The codes as the README's Markdown table (between its `<!-- codes -->` markers)."""
    rows = ["| # | code | reason |", "|---|---|---|"]
    for code in sorted(Code, key=lambda c: (PRECEDENCE[c] == 0, PRECEDENCE[c])):
        rows.append(f"| {PRECEDENCE[code]} | `{code.value}` | {code.reason} |")
    return "\n".join(rows) + "\n"
