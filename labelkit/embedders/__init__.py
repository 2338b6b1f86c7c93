"""The featurizers of `labelkit embed`: one small interface (:class:`labelkit.embedders.base.Featurizer`).

- :mod:`.pixels`: the pixel baseline (numpy and PIL only: no torch import),
- :mod:`.clip`: open_clip image and text towers,
- :mod:`.minilm`: MiniLM sentence embeddings (offline package),
- :mod:`.weights`: checking open_clip names and fetching their weights (cache, hub, offline).

Which one a model name means is decided in :func:`labelkit.embed.load_featurizer`.
"""
