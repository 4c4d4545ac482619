"""Benchmark reference: the spec's stack (FastAPI + uvicorn + prometheus-fastapi-instrumentator)
with the same endpoints, written the way the spec's Python service would be: /health/ready
queries PostgreSQL on every request. Run: uvicorn app:app (DATABASE_URL in the environment)."""

import os

import asyncpg
from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

app = FastAPI()
Instrumentator().instrument(app).expose(app, endpoint="/metrics")
state = {}


@app.on_event("startup")
async def startup():
    state["pool"] = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=10)


@app.get("/health")
async def health():
    return {"status": "pass", "version": "0.1.0"}


@app.get("/health/live")
async def live():
    return {"status": "pass"}


@app.get("/health/ready")
async def ready():
    async with state["pool"].acquire() as conn:
        await conn.fetchval("SELECT 1")
    return {"status": "pass"}
