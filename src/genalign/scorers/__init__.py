"""Scorers: turn a generated output into a number (and a JSON detail) for preference mining.

Look one up by name with `get_scorer(name, cfg_dict)`; the table is `SCORERS` in
`genalign.scorers.base`.
"""

from genalign.scorers.base import SCORERS, ObjectScore, Scorer, get_scorer

__all__ = ["SCORERS", "ObjectScore", "Scorer", "get_scorer"]
