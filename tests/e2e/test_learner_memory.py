"""The learner's peak memory is set by its token budget, not by the batch (docs/design.md §3), measured as
a child process's peak resident memory."""

from benchmarks.learner import step_peak_memory


def test_memory_of_a_step_is_set_by_the_token_budget_not_the_batch(tmp_path):
    """16x the samples at a fixed budget: the step's peak memory (a child process's peak RSS) barely
    grows. The model has a 32k vocabulary, so one-piece logits of the 16x batch would take ~1.6 GB."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path / "model"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=32000, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 pad_token_id=0)).save_pretrained(path)

    def peak(scale: int, budget: int) -> int:
        return step_peak_memory(str(path), scale, budget)

    small, large = peak(1, 1024), peak(16, 1024)
    assert large < 1.3 * small + 50_000, (small, large)  # KB
    one_piece = peak(16, 0)
    assert one_piece > 2 * large  # the same batch in one piece: the check is not vacuous
