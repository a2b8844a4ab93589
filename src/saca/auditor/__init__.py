"""The Perception-Grounded Step-Aware (PGSA) auditor (SACA §3.1, method-notes §3.2).

* :mod:`saca.auditor.scoring`: the equations, as pure functions (Eq. 1-4);
* :mod:`saca.auditor.base`: the perception-backend interface;
* :mod:`saca.auditor.oracle` / :mod:`saca.auditor.foundation`: the backends;
* :mod:`saca.auditor.auditor`: :class:`Auditor`, which batches a rollout group;
* :mod:`saca.auditor.figure`: the Fig. 6-style visualisation.
"""

from saca.auditor.auditor import AuditResult, Auditor, Trajectory  # noqa: F401
from saca.auditor.base import Frame, PairScore, PerceptionBackend, as_frame, make_backend  # noqa: F401
from saca.auditor.config import AuditorConfig, FoundationConfig, OracleConfig  # noqa: F401
