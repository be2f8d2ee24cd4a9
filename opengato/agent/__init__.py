"""The trained model at work: the policy that acts in environments, evaluation, captions, chat."""
