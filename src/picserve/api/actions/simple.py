"""The actions that need no more than a lookup: ListRunningTasks, GetCreditBalance, CancelTask."""

from __future__ import annotations

from picserve import domain
from picserve.protocol import messages
from picserve.protocol.envelope import Envelope

__all__ = ["cancel_task", "get_credit_balance", "list_running_tasks"]


async def list_running_tasks(ctx, account: domain.Account, envelope: Envelope, base_url: str) -> dict:
    messages.parse(messages.Empty, envelope.params)
    return {"TaskUIDList": await ctx.tasks.running(account)}


async def get_credit_balance(ctx, account: domain.Account, envelope: Envelope, base_url: str) -> dict:
    messages.parse(messages.Empty, envelope.params)
    reply = {"TotalCredits": account.total_credits, "UsedCredits": account.used_credits}
    if account.expire_at is not None:
        reply["ExpireTimestamp"] = int(account.expire_at.timestamp())
    return reply


async def cancel_task(ctx, account: domain.Account, envelope: Envelope, base_url: str) -> dict:
    request = messages.parse(messages.CancelTask, envelope.params)
    await ctx.tasks.cancel(account, request.TaskUIDList)
    return {}
