"""Several models behind one gateway: an agent with several roles names a different ``model`` per role.

    gateway = start_gateway(store, {"planner": planner_engine, "solver": solver_engine})
    # the agent, unchanged: ChatOpenAI(base_url=llm.base_url, model="planner") ... model="solver"

Each request goes to the service of the model its body names (an unknown name is refused with the list of
served ones, as a single-model gateway refuses a wrong one). Every recorded ``llm_call`` span carries the
model that answered (``attributes["model"]``) and the weights version of *that* model's engine, so credit
assignment and updates can be done per model (:class:`tracerl.algorithms.grpo.GRPOConfig.train_models`),
and a role whose model is not trained keeps serving its frozen weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tracerl.gateway.errors import GatewayError

if TYPE_CHECKING:
    from tracerl.gateway.app import Service
    from tracerl.gateway.history import AttemptKey
    from tracerl.gateway.service import CallResult


class RoutedService:
    """A :class:`~tracerl.gateway.app.Service` that dispatches on the request's ``model``."""

    def __init__(self, services: Mapping[str, Service]) -> None:
        if not services:
            raise GatewayError("a routed gateway needs at least one model: pass {name: engine, ...}")
        self.services = dict(services)

    def pick(self, body: Any) -> Service:
        model = body.get("model") if isinstance(body, dict) else None
        service = self.services.get(model) if isinstance(model, str) else None
        if service is None:
            served = sorted(self.services)
            raise GatewayError(
                f"model {model!r} is not served here; this gateway serves {served} (see GET /v1/models)",
                param="model", code="model_not_found",
            )  # fmt: skip
        return service

    async def models(self) -> dict[str, Any]:
        data: list[Any] = []
        for service in self.services.values():
            data += (await service.models())["data"]
        return {"object": "list", "data": data}

    async def chat(self, body: Any, attempt: AttemptKey | None = None) -> CallResult:
        return await self.pick(body).chat(body, attempt)

    async def completion(self, body: Any) -> CallResult:
        return await self.pick(body).completion(body)

    def forget(self, attempt: AttemptKey) -> None:
        for service in self.services.values():
            service.forget(attempt)
