"""fusiongym: just-in-time operator fusion and scheduling as a Gymnasium environment."""

import gymnasium

__version__ = "0.1.0"

# Registered on import: ``gym.make("fusiongym:FusionEnv-v0")`` imports this package first.
# The env module itself loads only on make (this import stays cheap: no TVM, no torch).
# 4 x the default max_nodes (fusiongym.envs.fusion_env.MAX_EPISODE_STEPS); pass
# max_episode_steps=4 * max_nodes to gym.make when raising max_nodes.
if "FusionEnv-v0" not in gymnasium.registry:
    gymnasium.register(id="FusionEnv-v0", entry_point="fusiongym.envs.fusion_env:FusionEnv",
                       max_episode_steps=4096)
