"""The pure decisions of the operator: from what it observes of a job to the changes to make (no I/O)."""
