"""The TrainingJob resource's identity: its API group, version, kind and names, defined once.

The CRD generator (api/crd.py), the Kubernetes calls (controller/kube.py), the kopf handlers, the
children's labels and owner references (builders/naming.py) and `kubefit size` all read them here.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "kubefit.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "TrainingJob"
LIST_KIND: Final = f"{KIND}List"
PLURAL: Final = "trainingjobs"
SINGULAR: Final = "trainingjob"
SHORT_NAMES: Final = ("tj",)
CATEGORIES: Final = ("all", "kubefit")
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# A job as the controller, its indexes and its metrics key it: (namespace, name).
JobKey = tuple[str, str]
