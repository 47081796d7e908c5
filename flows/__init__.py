"""Prefect flows, deployments and the ``ohlcv`` CLI: thin orchestration only."""

from settings import quiet_third_parties

quiet_third_parties()  # before any module here imports Prefect: it reads its switches then
