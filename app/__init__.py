"""The SHAP job that runs on the cluster (and locally). It never imports shapcluster."""
