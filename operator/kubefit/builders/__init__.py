"""Pure builders of what the operator creates for a TrainingJob: worker Pods and the headless Service.

No Kubernetes client and no I/O here: each function turns the parsed spec and the sizing decision
into a manifest (a plain dict), so it can be tested by direct calls.
"""
