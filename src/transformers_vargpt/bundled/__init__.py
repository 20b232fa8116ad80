"""The bundled shapes-world VARGPT: its data, tokenizer, architecture, training recipe and evaluation.

- `dataset`: seeded shapes-world conversations in the released training format (training combinations only);
- `tokenizer`: the word-level tokenizer built from the world's text;
- `model`: the sizes and the untrained model assembled around a trained VQVAE;
- `from_scratch`: stage 0, every part but the VQVAE trained together;
- `build`: the whole recipe (`make bundled-model`);
- `evaluate`: held-out generation and question accuracy with the independent pixel checker;
- `diagnose`: where wrong drawings go wrong (the VQVAE's round trip, or which scale of the generator).

The trained model itself is `transformers_vargpt.BUNDLED_MODEL`.
"""
