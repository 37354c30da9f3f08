"""The meta-router: per request, predict how well and how cheaply each model answers, and choose.

    from metarouter.router import load_router, Constraints
    decision = load_router().route({"messages": [...], "tools": [...]}, models, Constraints(needs_tools=True))
    decision.model, decision.reason, decision.to_dict()

Run time needs numpy only (with numba, the ``fast`` extra, the decision's kernel is compiled: router/kernel.py);
training (``metarouter.router.train``) needs the ``[train]`` extra.
"""

from .core import DEFAULT_ARTIFACT, Candidate, Constraints, RouteDecision, Router, load_router
from .request import RequestError, RouteRequest

__all__ = ["DEFAULT_ARTIFACT", "Candidate", "Constraints", "RequestError", "RouteDecision", "RouteRequest", "Router",
           "load_router"]
