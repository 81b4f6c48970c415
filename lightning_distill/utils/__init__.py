"""Plain-torch utilities at the bottom of the import graph: argument checks, fingerprints, seeds.

Nothing here imports Lightning or any other part of the package; everything else may import it.
"""
