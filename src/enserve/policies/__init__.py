"""Ensemble policies: which members answer a request, and when an answer is good enough.

- `cascade`: members run in stages, cheapest first; rows whose combined answer so far is
  confident enough exit after a stage, the rest go on (re-batched) to the next stage.
- `calibrate`: chooses a cascade's order and thresholds on labelled data.
- `policy_file`: the `policy.json` an ensemble's folder may carry (written by
  `enserve calibrate`, read by the server and the planner).
- `parameters`: a request's policy parameters (`policy`, `members`, `deadline_ms`,
  `min_members`), checked against the spec.
"""
