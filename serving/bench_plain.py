"""What a user without Ray would run: the same lookup and model behind plain FastAPI + uvicorn.

Started by `pushpilot bench serve` as the comparison; configured by PP_PLAIN_* variables.
"""

import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from models.registry import ModelRegistry
from pipeline import tenants
from pipeline.featurestore import load_features
from pipeline.redis_server import connect

_r = connect(os.environ["PP_PLAIN_REDIS_URL"], max_connections=64)
_model, _version = ModelRegistry(
    os.environ["PP_PLAIN_TRACKING_URI"], Path(os.environ["PP_PLAIN_ARTIFACT_ROOT"])
).load_champion(os.environ["PP_PLAIN_TENANT"], "propensity")

app = FastAPI()


class ScoreRequest(BaseModel):
    user_ids: list[str] = Field(min_length=1, max_length=1000)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/score")
def score(request: ScoreRequest, authorization: Annotated[str | None, Header()] = None) -> Any:
    if not authorization:
        raise HTTPException(401)
    key = tenants.authenticate(_r, authorization.removeprefix("Bearer "))
    features = load_features(_r, key.tenant_id, request.user_ids)
    proba = _model.predict_proba(features)[:, 1]
    return {"model_version": _version,
            "scores": [{"user_id": u, "score": float(s)} for u, s in zip(features.index, proba, strict=True)]}
