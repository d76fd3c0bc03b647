"""Typed result records: one class per kind of output file, written by the stage that makes
the file and read by the report through the same class.

Every record file is JSON with ``kind`` (which class) and ``schema_version``; reading checks
both, the type of every field (finite numbers only, no booleans for numbers) and refuses keys
the class does not have, so a file either means exactly what its class says or is refused with
one line naming the file and the field. Metric and setting names are checked against
:data:`METRICS` and :data:`SETTINGS`, the one place they are documented. Every record carries a
:class:`Provenance` (commit, config hash, package versions). No torch or pandas here: the module
is cheap to import from the stages, the report and the CLI alike.

Files and their classes (paths under ``<results_dir>/<bench>/``):

- ``runs/<variant>/metrics.json``: :class:`RunMetrics` (written by ``evaluate``)
- ``teacher/metrics.json``: :class:`TeacherMetrics` (``teacher_eval``)
- ``features/metrics.json``, ``clip/metrics.json``: :class:`AuxMetrics` (``features``, ``clip``)
- ``runs/<variant>/correct/metrics.json``: :class:`CorrectionMetrics` (``correct``)
- ``summary.json``: :class:`Summary` (``summarize``; ``summary.csv`` is its flat view)
- ``teacher.json`` (2-D mixture benchmarks): :class:`MixtureTeacher` (``evaluate``)
- ``<results_dir>/bench/<bench>.json``: :class:`BenchRecord` (``mct bench``)
- ``<results_dir>/rehearsal/<bench>.json``: :class:`RehearsalRecord` (``mct rehearse``)
"""

from .check import RecordError
from .files import (RECORDS, AuxMetrics, BenchRecord, CorrectionMetrics, MixtureTeacher, Record, RehearsalFlops,
                    RehearsalMemory, RehearsalRecord, RunMetrics, Summary, TeacherMetrics, read_record, write_record)
from .names import METRICS, SETTINGS, Scalar
from .parts import (VERDICTS, Claim, Comparison, CurvePoint, EMOverhead, Interval, Memory, Provenance, Scores, SeedRun,
                    Speed, SummaryRow, TeacherRow, provenance)

__all__ = ["RECORDS", "METRICS", "SETTINGS", "VERDICTS", "AuxMetrics", "BenchRecord", "Claim", "Comparison",
           "CorrectionMetrics", "CurvePoint", "Interval", "SeedRun",
           "EMOverhead", "Memory", "MixtureTeacher", "Provenance", "Record", "RecordError", "RehearsalFlops", "RehearsalMemory", "RehearsalRecord",
           "RunMetrics", "Scalar",
           "Scores", "Speed", "Summary", "SummaryRow", "TeacherMetrics", "TeacherRow", "provenance", "read_record",
           "write_record"]
