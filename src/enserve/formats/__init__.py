"""The pipeline's contract: the profile and plan formats and fused-group names.

`profile` (what the profiler writes and the planner reads), `plan` (what the planner
writes and the runtime executes) and `groups` (fused groups as data). No torch import.
"""
