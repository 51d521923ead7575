"""A small async client for the sandbox admin API, for tests and tooling."""

from types import TracebackType
from typing import Any

import httpx


class SandboxAdminError(Exception):
    """The admin API answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"sandbox admin API answered {status}: {body}")
        self.status = status
        self.body = body


class SandboxAdmin:
    """Typed-enough wrappers over the admin routes; answers are the JSON bodies."""

    def __init__(self, admin_url: str, *, timeout: float = 10.0) -> None:
        self.url = admin_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    @property
    def openai_base_url(self) -> str:
        """Base URL for an OpenAI-compatible client (``.../v1``)."""
        return f"{self.url}/v1"

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        body = response.json()
        if response.status_code >= 400:
            raise SandboxAdminError(response.status_code, body)
        return body

    async def server(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/admin/server")
        return result

    async def create_account(self, **fields: Any) -> dict[str, Any]:
        """POST /admin/accounts; the answer carries ``session_string``."""
        result: dict[str, Any] = await self._call("POST", "/admin/accounts", json=fields)
        return result

    async def create_chat(self, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/admin/chats", json=fields)
        return result

    async def post_message(self, from_id: int, peer: int | str, text: str) -> dict[str, Any]:
        body = {"from_id": from_id, "peer": str(peer), "text": text}
        result: dict[str, Any] = await self._call("POST", "/admin/messages", json=body)
        return result

    async def messages(self, user_id: int, peer: int | str | None = None) -> list[dict[str, Any]]:
        params: dict[str, str] = {"user_id": str(user_id)}
        if peer is not None:
            params["peer"] = str(peer)
        result: list[dict[str, Any]] = (await self._call("GET", "/admin/messages", params=params))[
            "messages"
        ]
        return result

    async def file_dialog(self, user_id: int, peer: int | str, folder_id: int = 1) -> None:
        """Archive the user's dialog with ``peer`` (folder 1) or bring it back (0)."""
        body = {"user_id": user_id, "peer": str(peer), "folder_id": folder_id}
        await self._call("POST", "/admin/folders", json=body)

    async def pin_dialog(self, user_id: int, peer: int | str, pinned: bool = True) -> None:
        """Pin the user's dialog with ``peer`` on top of its folder's pinned ones, or unpin it."""
        body = {"user_id": user_id, "peer": str(peer), "pinned": pinned}
        await self._call("POST", "/admin/pins", json=body)

    async def add_fault(self, user_id: int, kind: str, **fields: Any) -> int:
        body = {"user_id": user_id, "kind": kind, **fields}
        fault_id: int = (await self._call("POST", "/admin/faults", json=body))["id"]
        return fault_id

    async def delete_fault(self, fault_id: int) -> None:
        await self._call("DELETE", f"/admin/faults/{fault_id}")

    async def ledger(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._call("GET", "/admin/ledger"))["connections"]
        return result

    async def overlaps(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._call("GET", "/admin/ledger/overlaps"))[
            "overlaps"
        ]
        return result

    async def set_auth_key_duplicated(self, enabled: bool) -> None:
        await self._call("POST", "/admin/config", json={"auth_key_duplicated": enabled})

    async def set_random_id_duplicate(self, enabled: bool) -> None:
        await self._call("POST", "/admin/config", json={"random_id_duplicate": enabled})

    async def set_participants_listed(self, count: int) -> None:
        await self._call("POST", "/admin/config", json={"participants_listed": count})

    async def set_sign_up_unknown(self, enabled: bool) -> None:
        await self._call("POST", "/admin/config", json={"sign_up_unknown": enabled})

    async def add_ai_fault(self, kind: str, **fields: Any) -> int:
        fault_id: int = (
            await self._call("POST", "/admin/ai/faults", json={"kind": kind, **fields})
        )["id"]
        return fault_id

    async def set_ai_latency(self, latency_ms: int) -> None:
        await self._call("POST", "/admin/ai/config", json={"latency_ms": latency_ms})

    async def reset(self) -> None:
        await self._call("POST", "/admin/reset")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "SandboxAdmin":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
