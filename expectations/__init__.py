"""GX suites, the frames they validate, checkpoints and data docs."""

from settings import quiet_third_parties

quiet_third_parties()  # before any module here imports GX: it reads its switches at import
