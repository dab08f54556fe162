"""The registries' tables without their implementations: what every head, loss and backbone is
called, its options and flags, importable without torch (the trial config validates against these,
and ``pal-study validate`` / ``list`` start in a fraction of a second). ``pal_study.heads``,
``pal_study.losses`` and ``pal_study.models`` re-export them beside the modules that compute; an
entry whose implementation needs torch names it and imports it where it is first used."""
