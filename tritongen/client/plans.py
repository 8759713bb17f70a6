"""The steps a client plan yields, and how a failed call becomes one ClientError.

Everything a client does — fetch the model config once, split images into requests, set up
shared memory, retry, decode results — is written once, as a *plan*: a generator that yields
steps and receives their results. The sync client (``base.py``) and the asyncio client
(``aio.py``) only perform the steps:

- ``Call``: one method of tritonclient's ``InferenceServerClient`` (same names and positional
  arguments in ``tritonclient.grpc`` / ``.http`` and their ``aio``; ``protocols.py`` passes the
  timeout and ``compression`` as each protocol wants); its result is sent back, its
  exception thrown back into the plan, which translates it. An ``atomic`` call (shared-memory
  registration) is never abandoned half-way: a cancelled asyncio task waits for its answer,
  so the server never holds a region the client believes unregistered;
- ``Sleep``: wait between retries;
- ``Gather``: sub-plans (one per request of a split batch) the transport may run
  concurrently (asyncio does; the sync client runs them one after another); their results
  are sent back in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generator

from ..errors import ClientError
from .options import ClientOptions


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    timeout: float = 30.0  # seconds
    atomic: bool = False  # runs to its end even when the caller is cancelled: its outcome must be known


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Gather:
    plans: tuple


Step = Call | Sleep | Gather
Plan = Generator[Step, Any, Any]


def rpc(options: ClientOptions, what: str, method: str, *args, retry: bool = True, atomic: bool = False,
        timeout: float | None = None, **kwargs) -> Plan:
    """Call ``method`` (``timeout``: seconds, default the client's); retry with exponential
    backoff while the server is unavailable."""
    delays = options.retry_delays() if retry else iter(())
    while True:
        try:
            return (yield Call(method, args, kwargs, options.timeout if timeout is None else timeout, atomic))
        except Exception as exc:  # whatever the transport raised: translated here, once
            error, transient = translate(exc, what, options)
            delay = next(delays, None) if transient else None
            if delay is None:
                raise error from None
        yield Sleep(delay)


def _model_recovering(status: str, lowered_message: str) -> bool:
    """What Triton answers while `tritongen serve` reloads a model whose backend process died
    (measured on 2.51): INTERNAL "Stub process '...' is not healthy" until the watchdog notices,
    then NOT_FOUND "... has no available versions" while it unloads and loads the model. Both pass
    within seconds; a model that does not exist ("... is not found") is not retried."""
    if status == "INTERNAL":
        return "stub process" in lowered_message and "not healthy" in lowered_message
    return status == "NOT_FOUND" and "has no available versions" in lowered_message


def translate(exc: Exception, what: str, options: ClientOptions) -> tuple[ClientError, bool]:
    """A ClientError with the server's message, and whether trying again may help."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, ClientError):
        return exc, False
    if not isinstance(exc, InferenceServerException):
        return ClientError(f"{what}: {exc}"), False
    status = (exc.status() or "").rsplit(".", 1)[-1]
    message = exc.message() or str(exc)
    lowered = message.lower()
    if "handshake" in lowered or ("ssl" in lowered and status == "UNAVAILABLE"):
        hint = "is TLS enabled on the server?" if options.tls else "the server expects TLS: pass ssl=True / --ssl"
        return ClientError(f"cannot reach Triton at {options.url}: TLS handshake failed, {hint} ({message})"), False
    if status == "UNAVAILABLE" and any(word in lowered for word in ("connect", "socket", "dns", "unreachable")):
        return ClientError(f"cannot reach Triton at {options.url}: is the server running? ({message})"), True
    if status == "UNAVAILABLE":
        return ClientError(f"{what}: Triton at {options.url} is unavailable ({message})"), True
    if _model_recovering(status, lowered):
        return ClientError(f"{what}: the model is being unloaded at {options.url} (a replica stopping, or a reload "
                           f"after its backend process died) ({message})"), True
    if status == "DEADLINE_EXCEEDED":
        return ClientError(f"{what}: no answer from Triton at {options.url} within {options.timeout:g}s"), False
    return ClientError(f"{what}: {message}"), False
