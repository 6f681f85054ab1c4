"""The seed's three optimization modes as YAML files, shipped inside the package.

Read them with `PostDownloadOptimizationConfig.from_preset(name)`; they are package data so that a
wheel install finds them through `importlib.resources`, with no repository checkout around it.
"""
