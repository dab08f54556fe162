from __future__ import annotations

import os

# Tests share 2 cores: one intra-op thread per process keeps concurrent test workers from
# oversubscribing (a 3–36x slowdown measured on this kind of machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PAL_STUDY_CPUS", "1")
