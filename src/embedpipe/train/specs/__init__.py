"""The built-in models as `loop.ModelRun`s: word2vec (sgns, cbow), GloVe, the masked and
causal LMs, the biLM."""
