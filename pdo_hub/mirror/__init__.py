"""`pdo-hub mirror`: keep the models of a manifest fetched and optimized in the cache (layer 2)."""

from pdo_hub.mirror.manifest import Manifest, MirrorEntry, load_manifest, parse_manifest
from pdo_hub.mirror.plan import Plan, plan_entry
from pdo_hub.mirror.ray_jobs import RayOptions
from pdo_hub.mirror.runner import EntryResult, MirrorOptions, push_name, run_manifest

__all__ = ["EntryResult", "Manifest", "MirrorEntry", "MirrorOptions", "Plan", "RayOptions", "load_manifest",
           "parse_manifest", "plan_entry", "push_name", "run_manifest"]
