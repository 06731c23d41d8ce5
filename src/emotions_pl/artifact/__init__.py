"""Stage 2, artifact: a fit checkpoint becomes an exported Hugging Face folder; the predictor runs either."""
