"""genalign: feedback fine-tuning of generative models as Kubeflow pipelines."""
