"""Air-gapped bundles: a model, its engine image and llmdock itself in one verified, streamable file.

``llmdock bundle MODEL -o FILE`` writes one (:mod:`llmdock.bundle.write`); ``llmdock load FILE`` on an
offline host verifies every member before it loads the image and registers the model, and resumes a
partial copy (:mod:`llmdock.bundle.load`). The format and the checks are pure
(:mod:`llmdock.bundle.manifest`); Docker sits behind :class:`llmdock.bundle.images.Images`.

Example::

    llmdock bundle Qwen/Qwen2.5-7B-Instruct --image vllm/vllm-openai:v0.34.0 -o - | ssh gpu1 llmdock load -
"""
