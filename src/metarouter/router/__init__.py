"""The meta-router: per prompt, predict how well and how cheaply each model answers, and choose.

    from metarouter.router import load_router, Constraints
    decision = load_router().route(messages, models, Constraints(needs_tools=True), tradeoff=3)
    decision.ranked[0].model_id, decision.to_dict()

Run time needs numpy only; training (``metarouter.router.train``) needs the ``[train]`` extra.
"""

from .core import (
           DEFAULT_ARTIFACT,
           Candidate,
           Constraints,
           RouteDecision,
           Router,
           load_router,
           tradeoff_lambda,
)

__all__ = ["DEFAULT_ARTIFACT", "Candidate", "Constraints", "RouteDecision", "Router", "load_router",
           "tradeoff_lambda"]
