"""Scale-out on Ray (docs/ray.md): nothing here is imported unless a recipe asks for Ray.

- `rldiff.scale.cluster`: start a local Ray bound to 127.0.0.1, or connect to a cluster.
- `rldiff.scale.ray_train`: run the training loop on N `ray.train.torch.TorchTrainer` workers
  (`train_distributed`), which `rldiff run` uses when a recipe's `scale:` asks for it.
- `rldiff.scale.reward_actors`: serve a reward from a pool of Ray actors (`RewardActorPool`).
"""
