"""Sample content: image references (:mod:`~curate.media.refs`), the image loader
(:mod:`~curate.media.images`), Pillow-exact resize (:mod:`~curate.media.lanczos`), pHash
(:mod:`~curate.media.phash`) and caption normalisation (:mod:`~curate.media.captions`)."""
