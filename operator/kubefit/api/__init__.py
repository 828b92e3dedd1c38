"""The TrainingJob API: pydantic models of spec and status, validation, and the generated CRD."""
