"""ShapesWorld, the instrument: the scene generator, its exact scorer, the headline benchmark and the recipe of the
bundled model (with its small CLIP and VAE). It may use training and evaluation; nothing below it imports it."""
