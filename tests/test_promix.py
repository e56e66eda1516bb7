"""ProMix: one training batch against a line-by-line port of the official train() (Justherozen/ProMix,
Train_promix.py), the selection rules (CSS, MHCS, LGA) on toy losses and probabilities, FMix's mask
against a port of fmix.py, the schedules and debiasing by hand, gradients into every trained head,
the class distributions surviving resume bit-exactly, exact messages, and a run through the
noisy-label study on real CIFAR-10."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study_helpers import run_tiny_study
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize
from robustlab.data.augment import MultiView
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies import promix as promix_module
from robustlab.strategies.promix import (ProMix, ProMixConfig, PseudoHead, PseudoHeadNet, binarise, classwise_small_loss,
                                         debias_logits, debias_probs, fmix_loss, label_guessing, linear_rampup,
                                         low_frequency_image, matched_high_confidence, negative_entropy, soft_ce,
                                         update_distribution)
from robustlab.strategies.sop import TwoViews
from resume_helpers import InterruptAt, toy_images as _toy


# ---- line-by-line port of the official code (Justherozen/ProMix) -------------------------------

def official_debias_pl(logit, bias, tau=0.4):
    """utils/utils.py debias_pl."""
    bias = bias.detach().clone()
    debiased_prob = F.softmax(logit - tau * torch.log(bias), dim=1)
    return debiased_prob


def official_debias_output(logit, bias, tau=0.8):
    """utils/utils.py debias_output."""
    bias = bias.detach().clone()
    debiased_opt = logit + tau * torch.log(bias)
    return debiased_opt


def official_bias_update(input, bias, momentum, bias_mask=None):
    """utils/utils.py bias_update."""
    if bias_mask is not None:
        input_mean = input.detach() * bias_mask.detach().unsqueeze(dim=-1)
    else:
        input_mean = input.detach().mean(dim=0)
    bias = momentum * bias + (1 - momentum) * input_mean
    return bias


class OfficialCESoftLabel(nn.Module):
    """utils/utils.py CE_Soft_Label.forward."""

    def forward(self, outputs, targets=None):
        logsm_outputs = F.log_softmax(outputs, dim=1)
        final_outputs = logsm_outputs * targets.detach()
        loss_vec = - ((final_outputs).sum(dim=1))
        return loss_vec


def official_linear_rampup2(current, rampup_length):
    """utils/utils.py linear_rampup2."""
    assert current >= 0 and rampup_length >= 0
    if current >= rampup_length:
        return 1.0
    else:
        return current / rampup_length


def official_fmix_loss(input, y1, index, lam, train=True, reformulate=False):
    """fmix.py fmix_loss."""
    if train and not reformulate:
        y2 = y1[index]
        y1 = y1.max(1)[1]
        y2 = y2.max(1)[1]
        return F.cross_entropy(input, y1) * lam + F.cross_entropy(input, y2) * (1 - lam)
    else:
        return F.cross_entropy(input, y1)


def official_fftfreqnd(h, w=None, z=None):
    """fmix.py fftfreqnd."""
    fz = fx = 0
    fy = np.fft.fftfreq(h)
    if w is not None:
        fy = np.expand_dims(fy, -1)
        if w % 2 == 1:
            fx = np.fft.fftfreq(w)[: w // 2 + 2]
        else:
            fx = np.fft.fftfreq(w)[: w // 2 + 1]
    if z is not None:
        fy = np.expand_dims(fy, -1)
        if z % 2 == 1:
            fz = np.fft.fftfreq(z)[:, None]
        else:
            fz = np.fft.fftfreq(z)[:, None]
    return np.sqrt(fx * fx + fy * fy + fz * fz)


def official_get_spectrum(freqs, decay_power, ch, h, w=0, z=0):
    """fmix.py get_spectrum."""
    scale = np.ones(1) / (np.maximum(freqs, np.array([1. / max(w, h, z)])) ** decay_power)
    param_size = [ch] + list(freqs.shape) + [2]
    param = np.random.randn(*param_size)
    scale = np.expand_dims(scale, -1)[None, :]
    return scale * param


def official_make_low_freq_image(decay, shape, ch=1):
    """fmix.py make_low_freq_image."""
    freqs = official_fftfreqnd(*shape)
    spectrum = official_get_spectrum(freqs, decay, ch, *shape)
    spectrum = spectrum[:, 0] + 1j * spectrum[:, 1]
    mask = np.real(np.fft.irfftn(spectrum, shape))
    if len(shape) == 2:
        mask = mask[:1, :shape[0], :shape[1]]
    mask = (mask - mask.min())
    mask = mask / mask.max()
    return mask


def official_binarise_mask(mask, lam, in_shape, max_soft=0.0):
    """fmix.py binarise_mask."""
    idx = mask.reshape(-1).argsort()[::-1]
    mask = mask.reshape(-1)
    num = math.ceil(lam * mask.size) if random.random() > 0.5 else math.floor(lam * mask.size)
    eff_soft = max_soft
    if max_soft > lam or max_soft > (1 - lam):
        eff_soft = min(lam, 1 - lam)
    soft = int(mask.size * eff_soft)
    num_low = num - soft
    num_high = num + soft
    mask[idx[:num_high]] = 1
    mask[idx[num_low:]] = 0
    mask[idx[num_low:num_high]] = np.linspace(1, 0, (num_high - num_low))
    mask = mask.reshape((1, *in_shape))
    return mask


def official_label_guessing(idx_chosen, w_x, batch_size, score1, score2, match, tau, threshold):
    """Train_promix.py label_guessing, with args.tau and args.threshold passed in."""
    w_x2 = w_x.clone()
    if (1. * idx_chosen.shape[0] / batch_size) < threshold:
        high_conf_cond2 = (score1 > tau) * (score2 > tau) * match
        high_conf_cond2 = (1. * high_conf_cond2 - w_x.squeeze()) > 0
        hc2_idx = torch.where(high_conf_cond2)[0]
        max_to_sel_num = int(batch_size * threshold) - idx_chosen.shape[0]
        if high_conf_cond2.sum() > max_to_sel_num:
            score_mean = (score1 + score2) / 2
            idx_remove = (-score_mean[hc2_idx]).sort()[1][max_to_sel_num:]
            high_conf_cond2[hc2_idx[idx_remove]] = False
        w_x2[high_conf_cond2] = 1
    return w_x2


def official_eval_train_selection(losses, targets_list, rho, num_class):
    """Train_promix.py eval_train after the loss pass: the class-wise small-loss selection."""
    losses = (losses - losses.min()) / (losses.max() - losses.min())
    prob = np.zeros(targets_list.shape[0])
    idx_chosen_sm = []
    for j in range(num_class):
        indices = np.where(targets_list.cpu().numpy() == j)[0]
        if len(indices) == 0:
            continue
        bs_j = targets_list.shape[0] * (1. / num_class)
        pseudo_loss_vec_j = losses[indices]
        sorted_idx_j = pseudo_loss_vec_j.sort()[1].cpu().numpy()
        partition_j = max(min(int(math.ceil(bs_j * rho)), len(indices)), 1)
        idx_chosen_sm.append(indices[sorted_idx_j[:partition_j]])
    idx_chosen_sm = np.concatenate(idx_chosen_sm)
    prob[idx_chosen_sm] = 1
    return prob


class OfficialFMixPort:
    """The official FMix object's call/loss protocol around a fixed draw (mask, lambda, permutation)."""

    def __init__(self, draws):
        self.draws = list(draws)

    def __call__(self, x):
        mask, self.lam, self.index = self.draws.pop(0)
        return mask * x + (1 - mask) * x[self.index]

    def loss(self, y_pred, y, train=True):
        return official_fmix_loss(y_pred, y, self.index, self.lam, train)


def official_train_batch(epoch, net, net2, inputs_x, inputs_x2, labels_x, w_x, w_x2, pi1, pi2, pi1_unrel, pi2_unrel,
                         args, lambdas, fmix):
    """The body of Train_promix.py train() for one batch (no .cuda(); np.random.beta replaced by
    the `lambdas` queue, torch.randperm as official); returns (loss, pi1, pi2, pi1_unrel, pi2_unrel,
    idx_chosen, idx_chosen_2)."""
    CEsoft = OfficialCESoftLabel()
    w = official_linear_rampup2(epoch, args["warmup_ep"])
    alpha_output = args["debias_output"]
    debias_beta_pl = args["debias_pl"]
    beta = 0.1 * official_linear_rampup2(epoch, 2 * args["warmup_ep"]) if debias_beta_pl else 1
    batch_size = inputs_x.size(0)
    labels_x = torch.zeros(batch_size, args["num_class"]).scatter_(1, labels_x.view(-1, 1), 1)
    w_x = w_x.view(-1, 1).type(torch.FloatTensor)
    w_x2 = w_x2.view(-1, 1).type(torch.FloatTensor)
    outputs_x, outputs_x_ph, _ = net(inputs_x, train=True, use_ph=True)
    outputs_x2, outputs_x2_ph, _ = net(inputs_x2, train=True, use_ph=True)
    outputs_a, outputs_a_ph, _ = net2(inputs_x, train=True, use_ph=True)
    outputs_a2, outputs_a2_ph, _ = net2(inputs_x2, train=True, use_ph=True)
    outputs_x_ori = outputs_x.clone().detach()
    outputs_a_ori = outputs_a.clone().detach()
    outputs_x = official_debias_output(outputs_x, pi1, alpha_output)
    outputs_x2 = official_debias_output(outputs_x2, pi1, alpha_output)
    outputs_a = official_debias_output(outputs_a, pi2, alpha_output)
    outputs_a2 = official_debias_output(outputs_a2, pi2, alpha_output)
    outputs_x_unrel_ph = official_debias_output(outputs_x_ph, pi1_unrel, alpha_output)
    outputs_x2_unrel_ph = official_debias_output(outputs_x2_ph, pi1_unrel, alpha_output)
    outputs_a_unrel_ph = official_debias_output(outputs_a_ph, pi2_unrel, alpha_output)
    outputs_a2_unrel_ph = official_debias_output(outputs_a2_ph, pi2_unrel, alpha_output)
    outputs_x_ph = official_debias_output(outputs_x_ph, pi1, alpha_output)
    outputs_x2_ph = official_debias_output(outputs_x2_ph, pi1, alpha_output)
    outputs_a_ph = official_debias_output(outputs_a_ph, pi2, alpha_output)
    outputs_a2_ph = official_debias_output(outputs_a2_ph, pi2, alpha_output)
    with torch.no_grad():
        px = torch.softmax(outputs_x_ori, dim=1)
        px2 = torch.softmax(outputs_a_ori, dim=1)
        debias_px = official_debias_pl(outputs_x_ori, pi1, debias_beta_pl)
        debias_px2 = official_debias_pl(outputs_a_ori, pi2, debias_beta_pl)
        debias_px_unrel = official_debias_pl(outputs_x_ori, pi1_unrel, debias_beta_pl)
        debias_px2_unrel = official_debias_pl(outputs_a_ori, pi2_unrel, debias_beta_pl)
        pred_net = F.one_hot(debias_px.max(dim=1)[1], args["num_class"]).float()
        pred_net2 = F.one_hot(debias_px2.max(dim=1)[1], args["num_class"]).float()
        high_conf_cond = (labels_x * px).sum(dim=1) > args["tau"]
        high_conf_cond2 = (labels_x * px2).sum(dim=1) > args["tau"]
        w_x[high_conf_cond] = 1
        w_x2[high_conf_cond2] = 1
        pseudo_label_l = labels_x * w_x + pred_net * (1 - w_x)
        pseudo_label_l2 = labels_x * w_x2 + pred_net2 * (1 - w_x2)
        idx_chosen = torch.where(w_x == 1)[0]
        idx_unchosen = torch.where(w_x != 1)[0]
        idx_chosen_2 = torch.where(w_x2 == 1)[0]
        idx_unchosen_2 = torch.where(w_x2 != 1)[0]
        if epoch > args["num_epochs"] - args["start_expand"]:
            score1 = px.max(dim=1)[0]
            score2 = px2.max(dim=1)[0]
            match = px.max(dim=1)[1] == px2.max(dim=1)[1]
            hc2_sel_wx1 = official_label_guessing(idx_chosen, w_x, batch_size, score1, score2, match, args["tau"],
                                                  args["threshold"])
            hc2_sel_wx2 = official_label_guessing(idx_chosen_2, w_x2, batch_size, score1, score2, match, args["tau"],
                                                  args["threshold"])
            idx_chosen = torch.where(hc2_sel_wx1 == 1)[0]
            idx_chosen_2 = torch.where(hc2_sel_wx2 == 1)[0]
            idx_unchosen = torch.where(hc2_sel_wx1 != 1)[0]
            idx_unchosen_2 = torch.where(hc2_sel_wx2 != 1)[0]

    l = lambdas.pop(0)
    l = max(l, 1 - l)
    X_w_c = inputs_x[idx_chosen]
    pseudo_label_c = pseudo_label_l[idx_chosen]
    idx = torch.randperm(X_w_c.size(0))
    X_w_c_rand = X_w_c[idx]
    pseudo_label_c_rand = pseudo_label_c[idx]
    X_w_c_mix = l * X_w_c + (1 - l) * X_w_c_rand
    pseudo_label_c_mix = l * pseudo_label_c + (1 - l) * pseudo_label_c_rand
    logits_mix = net(X_w_c_mix)
    logits_mix = official_debias_output(logits_mix, pi1, alpha_output)
    loss_mix = CEsoft(logits_mix, targets=pseudo_label_c_mix).mean()
    x_fmix = fmix(X_w_c)
    logits_fmix = net(x_fmix)
    logits_fmix = official_debias_output(logits_fmix, pi1, alpha_output)
    loss_fmix = fmix.loss(logits_fmix, (pseudo_label_c.detach()).long())

    l = lambdas.pop(0)
    l = max(l, 1 - l)
    X_w_c_ph = inputs_x[idx_chosen]
    pseudo_label_c = pseudo_label_l[idx_chosen]
    idx_ph = torch.randperm(X_w_c_ph.size(0))
    X_w_c_rand_ph = X_w_c_ph[idx_ph]
    pseudo_label_c_rand = pseudo_label_c[idx_ph]
    X_w_c_mix_ph = l * X_w_c_ph + (1 - l) * X_w_c_rand_ph
    pseudo_label_c_mix_ph = l * pseudo_label_c + (1 - l) * pseudo_label_c_rand
    _, logits_mix_ph = net(X_w_c_mix_ph, use_ph=True)
    logits_mix_ph = official_debias_output(logits_mix_ph, pi1, alpha_output)
    loss_mix_ph = CEsoft(logits_mix_ph, targets=pseudo_label_c_mix_ph).mean()
    x_fmix_ph = fmix(X_w_c_ph)
    _, logits_fmix_ph = net(x_fmix_ph, use_ph=True)
    logits_fmix_ph = official_debias_output(logits_fmix_ph, pi1, alpha_output)
    loss_fmix_ph = fmix.loss(logits_fmix_ph, (pseudo_label_c.detach()).long())

    loss_cr = CEsoft(outputs_x2[idx_chosen], targets=pseudo_label_l[idx_chosen]).mean()
    loss_cr_ph = CEsoft(outputs_x2_ph[idx_chosen], targets=pseudo_label_l[idx_chosen]).mean()
    loss_ce = CEsoft(outputs_x[idx_chosen], targets=pseudo_label_l[idx_chosen]).mean()
    loss_ce_ph = CEsoft(outputs_x_ph[idx_chosen], targets=pseudo_label_l[idx_chosen]).mean()
    loss_net1 = loss_ce + w * (loss_cr + loss_mix + loss_fmix)

    ptx = debias_px_unrel ** (1 / args["T"])
    ptx = ptx / ptx.sum(dim=1, keepdim=True)
    beta = 0 if (epoch >= 2 * args["warmup_ep"] and beta < 1) else beta
    targets_urel = ptx
    loss_unrel_ph = CEsoft(outputs_x_unrel_ph[idx_unchosen], targets=targets_urel[idx_unchosen]).mean() \
        + w * CEsoft(outputs_x2_unrel_ph[idx_unchosen], targets=targets_urel[idx_unchosen]).mean()
    loss_net1_ph = beta * loss_unrel_ph + loss_ce_ph + w * (loss_cr_ph + loss_mix_ph + loss_fmix_ph)

    l = lambdas.pop(0)
    l = max(l, 1 - l)
    X_w_c = inputs_x[idx_chosen_2]
    pseudo_label_c = pseudo_label_l2[idx_chosen_2]
    idx = torch.randperm(X_w_c.size(0))
    X_w_c_rand = X_w_c[idx]
    pseudo_label_c_rand = pseudo_label_c[idx]
    X_w_c_mix2 = l * X_w_c + (1 - l) * X_w_c_rand
    pseudo_label_c_mix2 = l * pseudo_label_c + (1 - l) * pseudo_label_c_rand
    logits_mix2 = net2(X_w_c_mix2)
    logits_mix2 = official_debias_output(logits_mix2, pi2, alpha_output)
    loss_mix2 = CEsoft(logits_mix2, targets=pseudo_label_c_mix2).mean()
    x_fmix2 = fmix(X_w_c)
    logits_fmix2 = net2(x_fmix2)
    logits_fmix2 = official_debias_output(logits_fmix2, pi2, alpha_output)
    loss_fmix2 = fmix.loss(logits_fmix2, (pseudo_label_c.detach()).long())

    l = lambdas.pop(0)
    l = max(l, 1 - l)
    X_w_c_ph = inputs_x[idx_chosen_2]
    pseudo_label_c = pseudo_label_l2[idx_chosen_2]
    idx = torch.randperm(X_w_c_ph.size(0))
    X_w_c_rand_ph = X_w_c_ph[idx]
    pseudo_label_c_rand = pseudo_label_c[idx]
    X_w_c_mix2_ph = l * X_w_c_ph + (1 - l) * X_w_c_rand_ph
    pseudo_label_c_mix2 = l * pseudo_label_c + (1 - l) * pseudo_label_c_rand
    _, logits_mix2_ph = net2(X_w_c_mix2_ph, use_ph=True)
    logits_mix2_ph = official_debias_output(logits_mix2_ph, pi2, alpha_output)
    loss_mix2_ph = CEsoft(logits_mix2_ph, targets=pseudo_label_c_mix2).mean()
    x_fmix2_ph = fmix(X_w_c_ph)
    _, logits_fmix2_ph = net2(x_fmix2_ph, use_ph=True)
    logits_fmix2_ph = official_debias_output(logits_fmix2_ph, pi2, alpha_output)
    loss_fmix2_ph = fmix.loss(logits_fmix2_ph, (pseudo_label_c.detach()).long())

    loss_cr2 = CEsoft(outputs_a2[idx_chosen_2], targets=pseudo_label_l2[idx_chosen_2]).mean()
    loss_cr2_ph = CEsoft(outputs_a2_ph[idx_chosen_2], targets=pseudo_label_l2[idx_chosen_2]).mean()
    loss_ce2 = CEsoft(outputs_a[idx_chosen_2], targets=pseudo_label_l2[idx_chosen_2]).mean()
    loss_ce2_ph = CEsoft(outputs_a_ph[idx_chosen_2], targets=pseudo_label_l2[idx_chosen_2]).mean()
    loss_net2 = loss_ce2 + w * (loss_cr2 + loss_mix2 + loss_fmix2)

    ptx2 = debias_px2_unrel ** (1 / args["T"])
    ptx2 = ptx2 / ptx2.sum(dim=1, keepdim=True)
    targets_urel2 = ptx2
    loss_unrel2_ph = CEsoft(outputs_a_unrel_ph[idx_unchosen_2], targets=targets_urel2[idx_unchosen_2]).mean() \
        + w * CEsoft(outputs_a2_unrel_ph[idx_unchosen_2], targets=targets_urel2[idx_unchosen_2]).mean()
    loss_net2_ph = beta * loss_unrel2_ph + loss_ce2_ph + w * (loss_cr2_ph + loss_mix2_ph + loss_fmix2_ph)

    loss = loss_net1 + loss_net2 + loss_net1_ph + loss_net2_ph
    pi1 = official_bias_update(px[idx_chosen], pi1, args["bias_m"])
    pi2 = official_bias_update(px2[idx_chosen_2], pi2, args["bias_m"])
    pi1_unrel = official_bias_update(px[idx_unchosen], pi1_unrel, args["bias_m"])
    pi2_unrel = official_bias_update(px2[idx_unchosen_2], pi2_unrel, args["bias_m"])
    return loss, pi1, pi2, pi1_unrel, pi2_unrel, idx_chosen, idx_chosen_2


# ---- helpers -----------------------------------------------------------------------------------

class Features(nn.Module):
    """A linear classifier with robustlab's forward_features / forward_head split."""

    def __init__(self, classes=3, features=5, seed=0, scale=1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(4, features)
        self.head = nn.Linear(features, classes)
        self.num_features = features
        with torch.no_grad():
            self.head.weight.mul_(scale)

    def forward_features(self, x):
        return torch.tanh(self.body(x.flatten(1)))

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class OfficialDualHead(nn.Module):
    """The official ResNet.forward(x, train, use_ph) around a robustlab network and its pseudo head."""

    def __init__(self, net, ph):
        super().__init__()
        self.net, self.ph = net, ph

    def forward(self, x, train=False, use_ph=False):
        out = self.net.forward_features(x)
        out_linear = self.net.forward_head(out)
        if train:
            return out_linear, self.ph(out), None
        if use_ph:
            return out_linear, self.ph(out)
        return out_linear


def _strategy(classes=3, num_train=12, scale=1.0, clean=None, **options):
    seeds = iter(range(100))
    ctx = BuildContext(new_model=lambda: Features(classes, seed=next(seeds), scale=scale), num_classes=classes,
                       num_train=num_train, clean_train_labels=clean)
    return create_strategy("promix", context=ctx, **options)


# ---- the pieces by hand ------------------------------------------------------------------------

def test_rampup_debiasing_and_distribution_update_by_hand():
    assert [linear_rampup(e, 50) for e in (0, 25, 50, 70)] == [0.0, 0.5, 1.0, 1.0]
    assert linear_rampup(0, 0) == 1.0
    for e, length in ((0, 50), (10, 50), (49, 50), (50, 50), (3, 0), (7, 6.0)):
        assert linear_rampup(e, length) == official_linear_rampup2(e, length)
    logits, pi = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([0.5, 0.25, 0.25])
    expected = torch.tensor([[1 + 0.8 * math.log(0.5), 2 + 0.8 * math.log(0.25), 0.8 * math.log(0.25)]])
    assert torch.allclose(debias_logits(logits, pi, 0.8), expected)
    assert torch.allclose(debias_probs(logits, pi, 0.8), F.softmax(logits - 0.8 * pi.log(), 1))
    assert torch.allclose(debias_probs(logits, pi, 0.8), official_debias_pl(logits, pi, 0.8))
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    assert torch.allclose(update_distribution(pi, probs, 0.9), 0.9 * pi + 0.1 * torch.tensor([0.4, 0.25, 0.35]))
    assert torch.allclose(update_distribution(pi, probs, 0.9), official_bias_update(probs, pi, 0.9))
    assert torch.equal(update_distribution(pi, probs[:0], 0.9), pi)  # an empty set leaves it (official: NaN)


def test_soft_ce_negative_entropy_and_fmix_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    logp = F.log_softmax(logits, 1)
    assert soft_ce(logits, targets).item() == pytest.approx(-(logp[0, 0] + 0.5 * logp[1, 0] + 0.5 * logp[1, 1]).item() / 2)
    assert soft_ce(logits, targets).item() == pytest.approx(OfficialCESoftLabel()(logits, targets).mean().item())
    assert soft_ce(logits[:0], targets[:0]).item() == 0.0
    raw = torch.tensor([[-3.0, 0.5], [1.0, 1.0]])  # the official clamps logits at 1e-12 before the softmax
    p = torch.tensor([[1e-12, 0.5], [1.0, 1.0]]).softmax(1)
    assert negative_entropy(raw).item() == pytest.approx((p * p.log()).sum(1).mean().item())
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    perm = torch.tensor([1, 0])
    ce = lambda t: F.cross_entropy(logits, torch.tensor(t))  # noqa: E731
    assert fmix_loss(logits, onehot, 0.7, perm).item() == pytest.approx((0.7 * ce([0, 1]) + 0.3 * ce([1, 0])).item())
    assert fmix_loss(logits, onehot, 0.7, perm).item() == pytest.approx(
        official_fmix_loss(logits, onehot.long(), perm, 0.7).item())
    assert fmix_loss(logits[:0], onehot[:0], 0.7, perm[:0]).item() == 0.0


def test_schedules_follow_the_official_formulas():
    st = _strategy(pretrain_epochs=10, rampup_epochs=50, rho_start=0.2, rho_end=0.6)
    for epoch in (0, 10, 25, 49, 50, 99, 100, 101, 300):
        beta = 0.1 * official_linear_rampup2(epoch, 100)
        beta = 0 if (epoch >= 100 and beta < 1) else beta
        assert st.unreliable_weight(epoch) == pytest.approx(beta)
        assert st.rho(epoch) == pytest.approx(0.2 + 0.4 * official_linear_rampup2(epoch, 50))
    assert st.unreliable_weight(30) == pytest.approx(0.03)
    blind = _strategy(debias_pl=0.0, rampup_epochs=50)
    assert [blind.unreliable_weight(e) for e in (0, 60, 120)] == [1.0, 1.0, 1.0]  # official: beta 1 without debias_pl
    st.on_epoch_start(0, 600)
    assert [st.guessing(e) for e in (349, 350, 351, 599)] == [False, True, True, True]  # the last 250 of 600
    assert st.warmup_length() == 10


# ---- the selection rules ------------------------------------------------------------------------

def test_classwise_small_loss_picks_the_expected_indices():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    losses = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.4, 0.7])
    # quota ceil(8 / 3 * 0.5) = 2: class 0 keeps 1 and 3, class 1 keeps 4 and 6, class 2 its only one
    assert classwise_small_loss(losses, labels, 3, 0.5).nonzero().squeeze(1).tolist() == [1, 3, 4, 6, 7]
    assert classwise_small_loss(losses, labels, 3, 0.5).dtype == torch.bool
    # quota ceil(8 / 3 * 0.2) = 1 per class; an absent class (3) is skipped
    assert classwise_small_loss(losses, labels, 4, 0.3).nonzero().squeeze(1).tolist() == [1, 4, 7]
    # a class absent before others (1) does not end the selection: quota ceil(4 / 3 * 0.5) = 1 of classes 0 and 2
    assert classwise_small_loss(losses[4:], torch.tensor([2, 2, 0, 0]), 3, 0.5).nonzero().squeeze(1).tolist() == [0, 2]
    # ties keep the earlier sample
    tied = classwise_small_loss(torch.tensor([0.5, 0.2, 0.5, 0.5, 0.5]), torch.zeros(5, dtype=torch.long), 2, 0.6)
    assert tied.nonzero().squeeze(1).tolist() == [0, 1]
    # the quota is N / C, not the class's size: at rho 1 class 0 (4 of 8 samples) still drops its largest loss
    assert classwise_small_loss(losses, labels, 3, 1.0).nonzero().squeeze(1).tolist() == [1, 2, 3, 4, 5, 6, 7]
    g = torch.Generator().manual_seed(3)
    for rho, classes in ((0.5, 4), (0.7, 4), (0.35, 6)):
        losses = torch.rand(60, generator=g)
        labels = torch.randint(0, classes, (60,), generator=g)
        official = official_eval_train_selection(losses.clone(), labels.float(), rho, classes)
        assert classwise_small_loss(losses, labels, classes, rho).numpy().tolist() == (official == 1).tolist()


def test_matched_high_confidence_adds_confident_given_labels_only():
    probs = torch.tensor([[0.995, 0.005], [0.995, 0.005], [0.2, 0.8], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 1, 0])
    selected = torch.tensor([False, False, False, True])
    assert matched_high_confidence(selected, probs, labels, 0.99).tolist() == [True, False, False, True]
    assert matched_high_confidence(selected, probs, labels, 0.7).tolist() == [True, False, True, True]
    assert matched_high_confidence(selected, probs, labels, 0.8).tolist() == [True, False, False, True]  # 0.8 is not > 0.8


def test_label_guessing_adds_agreeing_confident_samples_up_to_the_threshold():
    selected = torch.tensor([True, False, False, False, False, False, False, False, False, False])
    score1 = torch.tensor([0.99, 0.97, 0.99, 0.96, 0.50, 0.98, 0.99, 0.2, 0.2, 0.2])
    score2 = torch.tensor([0.99, 0.97, 0.99, 0.99, 0.99, 0.98, 0.94, 0.2, 0.2, 0.2])
    match = torch.tensor([True, True, True, True, True, False, True, True, True, True])
    # candidates (both > 0.95, agreeing, not yet selected): 1, 2, 3 with mean scores 0.97, 0.99, 0.975;
    # room int(10 * 0.3) - 1 = 2: the two most confident, 2 and 3
    out = label_guessing(selected, score1, score2, match, 0.95, 0.3)
    assert out.nonzero().squeeze(1).tolist() == [0, 2, 3]
    assert label_guessing(selected, score1, score2, match, 0.95, 0.9).nonzero().squeeze(1).tolist() == [0, 1, 2, 3]
    # strictly above tau: a score equal to it is not confident enough, in either network
    at = torch.tensor([0.5, 0.75, 0.75, 0.75])
    first = label_guessing(torch.zeros(4, dtype=torch.bool), at, torch.tensor([0.75, 0.5, 0.75, 0.75]),
                           torch.ones(4, dtype=torch.bool), 0.5, 1.0)
    assert first.tolist() == [False, False, True, True]
    full = torch.tensor([True] * 9 + [False])
    assert torch.equal(label_guessing(full, score1, score2, match, 0.1, 0.9), full)  # 90% selected already
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        sel = torch.rand(16, generator=g) < 0.3
        s1, s2 = 0.5 + 0.5 * torch.rand(16, generator=g), 0.5 + 0.5 * torch.rand(16, generator=g)
        m = torch.rand(16, generator=g) < 0.8
        w_x = sel.float().view(-1, 1)
        official = official_label_guessing(torch.where(w_x == 1)[0], w_x, 16, s1, s2, m, 0.6, 0.9)
        assert label_guessing(sel, s1, s2, m, 0.6, 0.9).tolist() == (official.squeeze(1) == 1).tolist()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the port's irfftn(spectrum, shape) without axes
def test_fmix_mask_matches_the_official_fmix_image_and_binarisation(monkeypatch):
    for h, w in ((8, 8), (6, 7), (32, 32)):
        param = torch.randn(h, w // 2 + 1 + w % 2, 2, dtype=torch.float64)
        monkeypatch.setattr(np.random, "randn", lambda *size: param.numpy().reshape(size))
        official = official_make_low_freq_image(3.0, (h, w))[0]
        ours = low_frequency_image(param, h, w)
        assert torch.allclose(ours, torch.from_numpy(official), rtol=0, atol=1e-12)
        for lam, up in ((0.3, True), (0.3, False), (0.75, True)):
            monkeypatch.setattr(random, "random", lambda: 0.9 if up else 0.1)
            expected = official_binarise_mask(official.copy(), lam, (h, w))[0]
            mask = binarise(ours, lam, up)
            assert mask.sum().item() == (math.ceil if up else math.floor)(lam * h * w)
            assert torch.equal(mask, torch.from_numpy(expected))
    image = torch.tensor([[0.1, 0.9], [0.5, 0.7]])
    assert binarise(image, 0.5, True).tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert binarise(image, 0.6, True).tolist() == [[0.0, 1.0], [1.0, 1.0]]  # ceil(2.4) = 3
    assert binarise(image, 0.6, False).tolist() == [[0.0, 1.0], [0.0, 1.0]]  # floor(2.4) = 2


def test_fmix_mixes_a_batch_with_a_permutation_of_itself():
    torch.manual_seed(1)
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 2, 6, 8).clone()
    mixed, lam, perm = promix_module.fmix(x)
    assert mixed.shape == x.shape
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(8))
    for i in range(8):  # every pixel comes from the sample itself or its partner, the same mask for all
        own = mixed[i] == x[i]
        assert torch.all(own | (mixed[i] == x[perm[i]]))
    masks = torch.stack([(mixed[i] == x[i])[0] for i in range(8) if perm[i] != i])
    assert torch.all(masks == masks[0])
    assert abs(masks[0].float().mean().item() - lam) <= 1 / 48 + 1e-6


# ---- one batch against the official train() -----------------------------------------------------

@pytest.mark.parametrize("epoch,num_epochs", [(12, 300), (30, 60)])  # without and with label guessing
def test_step_matches_the_official_train_batch(monkeypatch, epoch, num_epochs):
    n, classes = 16, 3
    st = _strategy(classes, num_train=n, scale=4.0, pretrain_epochs=2, rampup_epochs=20, tau=0.6, threshold=0.9,
                   start_expand=40, debias_output=0.8, debias_pl=0.5, temperature=0.5, bias_momentum=0.7)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 2, 4, generator=g).view(n, 2, 1, 2, 2)
    y = torch.randint(0, classes, (n,), generator=g)
    idx = torch.arange(n)
    st.sel1.copy_(torch.rand(n, generator=g) < 0.4)
    st.sel2.copy_(torch.rand(n, generator=g) < 0.4)
    for name in ("pi1", "pi2", "pi1_unrel", "pi2_unrel"):
        getattr(st, name).copy_(torch.softmax(torch.randn(classes, generator=g), 0))
    before = {k: v.clone() for k, v in st.state_dict().items()}
    before["sel1"], before["sel2"] = st.sel1.clone(), st.sel2.clone()
    lambdas = [0.3, 0.8, 0.6, 0.45]
    draws = []
    for _ in range(4):
        mask = (torch.rand(1, 2, 2, generator=g) < 0.5).float()
        draws.append((mask, float(torch.rand((), generator=g)), None))
    ours_draws, official_draws = list(draws), list(draws)

    def our_fmix(inputs):
        mask, lam, _ = ours_draws.pop(0)
        perm = torch.arange(len(inputs)).flip(0)
        return mask * inputs + (1 - mask) * inputs[perm], lam, perm

    guessed = []

    def spy(selected, *args):
        out = label_guessing(selected, *args)
        guessed.append(int(out.sum()) - int(selected.sum()))
        return out

    monkeypatch.setattr(promix_module, "label_guessing", spy)
    queue = list(lambdas)
    monkeypatch.setattr(promix_module, "mixup_lambda", lambda alpha: max(queue[0], 1 - queue.pop(0)))
    monkeypatch.setattr(promix_module, "fmix", our_fmix)
    st.on_epoch_start(epoch, num_epochs)
    torch.manual_seed(7)
    out = st.train_step(x, y, idx, epoch)

    class FlipFMix(OfficialFMixPort):
        def __call__(self, inputs):
            mask, self.lam, _ = self.draws.pop(0)
            self.index = torch.arange(len(inputs)).flip(0)
            return mask * inputs + (1 - mask) * inputs[self.index]

    args = {"warmup_ep": 20, "debias_output": 0.8, "debias_pl": 0.5, "num_class": classes, "tau": 0.6,
            "num_epochs": num_epochs - 1, "start_expand": 40, "threshold": 0.9, "T": 0.5, "bias_m": 0.7}
    net1, net2 = OfficialDualHead(st.model, st.ph1), OfficialDualHead(st.peer, st.ph2)
    torch.manual_seed(7)
    loss, pi1, pi2, pi1_u, pi2_u, chosen1, chosen2 = official_train_batch(
        epoch, net1, net2, x[:, 0], x[:, 1], y, before["sel1"].float(), before["sel2"].float(), before["pi1"],
        before["pi2"], before["pi1_unrel"], before["pi2_unrel"], args, list(lambdas), FlipFMix(official_draws))
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    for ours, theirs in ((st.pi1, pi1), (st.pi2, pi2), (st.pi1_unrel, pi1_u), (st.pi2_unrel, pi2_u)):
        assert torch.allclose(ours, theirs, atol=1e-6)
    # the batch exercises the rules: MHCS (and, late in the run, LGA) add samples beyond CSS
    css = int(before["sel1"].sum()) + int(before["sel2"].sum())
    assert len(chosen1) + len(chosen2) > css and len(chosen1) < n
    assert not queue and not ours_draws  # four mixup and four FMix draws, as the official batch
    assert guessed == ([1, 1] if epoch >= num_epochs - 40 else [])  # LGA (last 40 epochs) adds a sample per network


def test_step_trains_every_head_and_warmup_only_the_primary_heads():
    st = _strategy(num_train=12, pretrain_epochs=1, tau=0.9)
    x = torch.randn(12, 2, 1, 2, 2)
    y = torch.arange(12) % 3
    idx = torch.arange(12)
    st.on_epoch_start(0, 5)
    out = st.train_step(x, y, idx, 0)
    expected = F.cross_entropy(st.model(x[:, 0]), y) + F.cross_entropy(st.peer(x[:, 0]), y)
    assert out.loss.item() == pytest.approx(expected.item())
    assert torch.equal(out.logits, st.model(x[:, 0]))
    out.loss.backward()
    for name, p in st.named_parameters():
        assert (p.grad is not None) == (not name.startswith("ph")), name
    st.zero_grad(set_to_none=True)
    st.sel1.copy_(torch.arange(12) < 6)
    st.sel2.copy_(torch.arange(12) >= 6)
    st.on_epoch_start(1, 5)
    out = st.train_step(x, y, idx, 1)
    out.loss.backward()
    for name, p in st.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.equal(out.logits, st.model(x[:, 0]).detach())


def _heads(st, net, ph, x):
    f = net.forward_features(x)
    return net.forward_head(f), ph(f)


def test_an_empty_selection_trains_the_pseudo_head_on_the_rest_only():
    st = _strategy(num_train=12, pretrain_epochs=1, rampup_epochs=4, tau=0.9999, bias_momentum=0.5, start_expand=0)
    x = torch.randn(12, 2, 1, 2, 2)
    y = torch.arange(12) % 3
    st.sel1.zero_()
    st.sel2.zero_()
    st.on_epoch_start(2, 10)
    pis = {k: getattr(st, k).clone() for k in ("pi1", "pi2", "pi1_unrel", "pi2_unrel")}
    w, beta = 0.5, 0.1 * 2 / 8
    expected = 0.0
    for net, ph, pi_u in ((st.model, st.ph1, pis["pi1_unrel"]), (st.peer, st.ph2, pis["pi2_unrel"])):
        main_w, ph_w = _heads(st, net, ph, x[:, 0])
        _, ph_s = _heads(st, net, ph, x[:, 1])
        guess = F.softmax(main_w - 0.8 * pi_u.log(), 1) ** 2
        guess = guess / guess.sum(1, keepdim=True)
        expected = expected + beta * (soft_ce(ph_w + 0.8 * pi_u.log(), guess) + w * soft_ce(ph_s + 0.8 * pi_u.log(), guess))
    out = st.train_step(x, y, torch.arange(12), 2)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(st.pi1, pis["pi1"]) and torch.equal(st.pi2, pis["pi2"])  # nothing selected: unchanged
    p1 = st.model(x[:, 0]).softmax(1)
    assert torch.allclose(st.pi1_unrel, 0.5 * pis["pi1_unrel"] + 0.5 * p1.mean(0).detach(), atol=1e-6)


def test_a_full_selection_has_no_unreliable_loss_and_keeps_its_distribution():
    st = _strategy(num_train=12, pretrain_epochs=1, rampup_epochs=4, bias_momentum=0.5, start_expand=0)
    x = torch.randn(12, 2, 1, 2, 2)
    y = torch.arange(12) % 2  # class 2 absent from the batch: one-hot targets still have 3 columns
    st.on_epoch_start(2, 10)
    before = st.pi1_unrel.clone()
    out = st.train_step(x, y, torch.arange(12), 2)
    assert torch.isfinite(out.loss) and torch.equal(st.pi1_unrel, before)
    p1 = st.model(x[:, 0]).softmax(1)
    assert torch.allclose(st.pi1, 0.5 / 3 + 0.5 * p1.mean(0).detach(), atol=1e-6)


def test_fmix_mask_draws_its_parameters_and_rounding_from_torch():
    torch.manual_seed(4)
    mask = promix_module.fmix_mask(0.3, 6, 7)
    torch.manual_seed(4)
    param = torch.randn(6, 7 // 2 + 2, 2, dtype=torch.float64)
    up = float(torch.rand(())) > 0.5
    assert torch.equal(mask, binarise(low_frequency_image(param, 6, 7), 0.3, up)) and mask.shape == (6, 7)


def test_fmix_rounds_the_mask_size_up_or_down_at_random():
    torch.manual_seed(0)
    sizes = {int(promix_module.fmix_mask(0.3, 3, 3).sum()) for _ in range(30)}
    assert sizes == {2, 3}  # floor and ceil of 0.3 * 9


def test_warmup_adds_the_official_penalty_for_asymmetric_noise():
    st = _strategy(num_train=12, pretrain_epochs=3, noise_mode="asym")
    x = torch.randn(12, 2, 1, 2, 2)
    y = torch.arange(12) % 3
    l1, l2 = st.model(x[:, 0]), st.peer(x[:, 0])
    expected = F.cross_entropy(l1, y) + F.cross_entropy(l2, y) + negative_entropy(l1) + negative_entropy(l2)
    assert st.train_step(x, y, torch.arange(12), 2).loss.item() == pytest.approx(expected.item())


def test_train_step_needs_two_views():
    st = _strategy()
    with pytest.raises(UsageError) as err:
        st.train_step(torch.randn(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), torch.arange(4), 0)
    assert str(err.value) == "ProMix needs a weak and a strong view per sample: x of shape (N, 2, C, H, W)"
    with pytest.raises(UsageError):
        st.train_step(torch.randn(4, 1, 1, 2, 2), torch.zeros(4, dtype=torch.long), torch.arange(4), 0)


def test_train_pass_selects_per_network_and_metrics_count_both_networks():
    n = 12
    clean = torch.arange(n) % 3
    noisy = clean.clone()
    noisy[[0, 4]] = (noisy[[0, 4]] + 1) % 3
    st = _strategy(num_train=n, clean=clean, pretrain_epochs=1, rho_start=0.5, rho_end=0.5, tau=0.999)
    x = torch.randn(n, 1, 2, 2)
    loader = [(x[:6], noisy[:6], torch.arange(6)), (x[6:], noisy[6:], torch.arange(6, n))]
    st.on_train_pass(0, loader)  # warm-up: nothing selected yet, everything trains
    assert st.sel1.all() and st.sel2.all()
    st.on_epoch_start(0, 5)
    order = torch.tensor([3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11])  # a batch in another order than the dataset
    st.train_step(torch.stack([x, x], 1)[order], noisy[order], order, 0)
    assert st.epoch_metrics() == {"promix_rho": 0.5, "label_precision": pytest.approx(10 / 12), "label_recall": 1.0}
    with torch.no_grad():
        st.on_train_pass(1, loader)
    for net, sel in ((st.model, st.sel1), (st.peer, st.sel2)):
        losses = F.cross_entropy(net(x), noisy, reduction="none")
        assert torch.equal(sel, classwise_small_loss(losses, noisy, 3, 0.5))
        assert int(sel.sum()) == 6  # ceil(12 / 3 * 0.5) = 2 per class
    st.on_epoch_start(1, 5)
    st.train_step(torch.stack([x, x], 1), noisy, torch.arange(n), 1)
    both = torch.cat([st.sel1, st.sel2])  # tau 0.999: MHCS adds nothing to these untrained nets
    is_clean = torch.cat([noisy == clean] * 2)
    hits = int((both & is_clean).sum())
    assert st.epoch_metrics() == {"promix_rho": 0.5, "label_precision": pytest.approx(hits / int(both.sum())),
                                  "label_recall": pytest.approx(hits / int(is_clean.sum()))}
    st.on_epoch_start(2, 5)
    assert st.epoch_metrics() == {"promix_rho": 0.5}
    assert _strategy().epoch_metrics() == {"promix_rho": 0.7}  # no clean labels: the selection is not measured


def test_epoch_metrics_divide_by_the_counts_and_never_by_zero():
    st = _strategy()
    st._counts = torch.tensor([1, 1, 1])
    assert st.epoch_metrics() == {"promix_rho": 0.7, "label_precision": 1.0, "label_recall": 1.0}
    st._counts = torch.tensor([0, 0, 0])
    assert st.epoch_metrics() == {"promix_rho": 0.7, "label_precision": 0.0, "label_recall": 0.0}
    st._counts = torch.tensor([4, 3, 6])
    assert st.epoch_metrics() == {"promix_rho": 0.7, "label_precision": 0.75, "label_recall": 0.5}


def test_prediction_is_the_mean_of_the_primary_heads_and_pseudo_heads_are_listed():
    st = _strategy()
    x = torch.randn(5, 1, 2, 2)
    assert torch.allclose(st.predict(x), (st.model(x) + st.peer(x)) / 2)
    extra = st.extra_predictors()
    assert set(extra) == {"net1", "net2", "ensemble", "net1_ph", "net2_ph"}
    assert extra["net1"] is st.model and extra["net2"] is st.peer
    assert torch.allclose(extra["ensemble"](x), st.predict(x))
    assert torch.allclose(extra["net2_ph"](x), st.ph2(st.peer.forward_features(x)))
    assert isinstance(extra["net1_ph"], PseudoHeadNet) and extra["net1_ph"].head is st.ph1


def test_pseudo_head_is_a_fresh_copy_of_the_network_head_with_its_logit_scale():
    class Scaled(Features):
        def __init__(self):
            super().__init__(classes=3, seed=0)
            self.head = nn.Linear(5, 3, bias=False)
            self.scale = 0.5

        def forward_head(self, f):
            return self.head(f) * self.scale

    net = Scaled()
    torch.manual_seed(1)
    ph = PseudoHead(net, 3)
    assert ph.head.bias is None and ph.scale == 0.5 and ph.head is not net.head
    assert not torch.equal(ph.head.weight, net.head.weight)  # initialised afresh, not the primary head's weights
    f = torch.randn(4, 5)
    assert torch.allclose(ph(f), f @ ph.head.weight.T * 0.5)

    class Headless(nn.Module):
        num_features = 6

    plain = PseudoHead(Headless(), 4)
    assert isinstance(plain.head, nn.Linear) and (plain.head.in_features, plain.head.out_features) == (6, 4)
    assert plain.scale == 1.0


def test_presets_are_valid_and_keep_the_official_order_of_the_stages():
    for name, epochs in (("quick", 20), ("paper", 100), ("fast", 10)):
        options = ProMix.presets[name]
        cfg = make_config("promix", options)
        warmup = cfg.pretrain_epochs if cfg.pretrain_epochs is not None else 10
        # warm-up, then the D_u loss while beta > 0, and LGA in the last start_expand epochs, all inside the run
        assert 0 < warmup < 2 * cfg.rampup_epochs <= epochs and 0 < cfg.start_expand < epochs - warmup


def test_strong_view_adds_geometry_colour_and_cutout_to_the_run_augmentation():
    from types import SimpleNamespace

    weak = BatchAugment(AugmentConfig(crop_pad=2, flip=True), (0.5,) * 3, (0.25,) * 3)
    views = _strategy().train_augment(MultiView(weak, 2), SimpleNamespace(mean=(0.5,) * 3, std=(0.25,) * 3))
    assert isinstance(views, TwoViews) and views.weak is weak
    c = views.strong.config
    assert (c.crop_pad, c.flip, c.rotate, c.shear, c.jitter, c.cutout) == (2, True, 15.0, 8.5, 0.45, 16)
    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    assert views(images, torch.Generator().manual_seed(0)).shape == (4, 2, 3, 8, 8)
    plain = MultiView(Normalize((0.5,) * 3, (0.25,) * 3), 2)
    assert _strategy().train_augment(plain, None) is plain  # a custom augmentation keeps its own two draws


# ---- options --------------------------------------------------------------------------------------

def test_options_resolve_to_the_official_values():
    from types import SimpleNamespace

    def build(classes, noise_type="symmetric", rate=0.2, **options):
        ctx = BuildContext(new_model=lambda: Features(classes), num_classes=classes, num_train=10, noise_rate=rate,
                           experiment=SimpleNamespace(data=SimpleNamespace(noise_type=noise_type)))
        return create_strategy("promix", context=ctx, **options)

    c10 = build(10)
    assert c10.options() == {"pretrain_epochs": 10, "rampup_epochs": 50.0, "rho_start": 0.7, "rho_end": 0.7,
                             "tau": 0.99, "threshold": 0.9, "start_expand": 250, "debias_output": 0.8,
                             "debias_pl": 0.8, "temperature": 0.5, "bias_momentum": 0.9999, "noise_mode": "sym"}
    assert (c10.pretrain_epochs, c10.tau, c10.debias_output, c10.debias_pl, c10.penalty) == (10, 0.99, 0.8, 0.8, False)
    c100 = build(100, rate=0.5)
    assert (c100.pretrain_epochs, c100.tau, c100.debias_output, c100.debias_pl, c100.rho_start, c100.rho_end) == \
        (30, 0.95, 0.5, 0.5, 0.5, 0.5)
    asym = build(10, "asymmetric", 0.4)
    assert asym.penalty and asym.options()["noise_mode"] == "asym" and asym.rho_start == 0.5
    assert build(10, "pair", 0.2).penalty and build(10, "human:aggre", 0.09).rho_start == 0.5
    assert build(10, rate=0.34).rho_start == 0.7 and build(10, rate=0.35).rho_start == 0.5
    own = build(10, rho_start=0.2, rho_end=0.6, noise_mode="sym", tau=0.9, debias_pl=0.0)
    assert (own.rho_start, own.rho_end, own.tau, own.debias_pl, own.penalty) == (0.2, 0.6, 0.9, 0.0, False)
    assert build(10, rho_start=0.4).rho_end == 0.4
    assert ProMix.presets["paper"] == {"start_expand": 42}
    assert ProMix.presets["quick"]["pretrain_epochs"] == 5 and ProMix.presets["fast"]["pretrain_epochs"] == 2
    assert ProMix.views == 2 and ProMix.needs_train_pass and ProMix.unused_parameters


@pytest.mark.parametrize("bad,message", [
    ({"pretrain_epochs": -1}, "pretrain_epochs must be >= 0, got -1"),
    ({"rampup_epochs": -1.0}, "rampup_epochs must be >= 0, got -1.0"),
    ({"rampup_epochs": math.inf}, "option rampup_epochs must be a finite number, got inf"),
    ({"rho_start": 0.0}, "rho_start must be in (0, 1], got 0.0"),
    ({"rho_end": 1.5}, "rho_end must be in (0, 1], got 1.5"),
    ({"tau": 1.0}, "tau must be in (0, 1), got 1.0"),
    ({"tau": 0.0}, "tau must be in (0, 1), got 0.0"),
    ({"threshold": 0.0}, "threshold must be in (0, 1], got 0.0"),
    ({"threshold": 1.2}, "threshold must be in (0, 1], got 1.2"),
    ({"start_expand": -1}, "start_expand must be >= 0, got -1"),
    ({"debias_output": -0.1}, "debias_output must be >= 0, got -0.1"),
    ({"debias_pl": math.nan}, "option debias_pl must be a finite number, got nan"),
    ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
    ({"bias_momentum": 1.0}, "bias_momentum must be in [0, 1), got 1.0"),
    ({"bias_momentum": -0.1}, "bias_momentum must be in [0, 1), got -0.1"),
    ({"noise_mode": "pair"}, "noise_mode must be auto, sym or asym, got 'pair'"),
])
def test_config_bounds_and_exact_messages(bad, message):
    with pytest.raises(UsageError) as err:
        make_config("promix", bad)
    assert str(err.value) == f"strategy 'promix': {message}"


def test_bounds_accept_their_edges():
    for ok in ({"pretrain_epochs": 0, "rampup_epochs": 0.0, "rho_start": 1.0, "rho_end": 1.0, "threshold": 1.0,
                "start_expand": 0, "debias_output": 0.0, "debias_pl": 0.0, "bias_momentum": 0.0},):
        make_config("promix", ok)
    assert ProMixConfig().noise_mode == "auto"


def test_constructor_needs_features_the_training_set_size_and_two_classes():
    with pytest.raises(UsageError) as err:
        ProMix(nn.Linear(4, 3), nn.Linear(4, 3), 10, 3)
    assert str(err.value) == ("ProMix needs a model with forward_features and num_features "
                              "(its pseudo head shares the features)")
    with pytest.raises(UsageError) as err:
        ProMix(Features(), Features(), 0, 3)
    assert str(err.value) == "ProMix needs the training-set size (num_train) for its per-sample selection"
    with pytest.raises(UsageError) as err:
        ProMix(Features(1), Features(1), 10, 1)
    assert str(err.value) == "ProMix needs >= 2 classes, got 1"
    class NoWidth(nn.Module):
        def forward_features(self, x):
            return x

    with pytest.raises(UsageError):
        ProMix(NoWidth(), NoWidth(), 10, 3)
    smallest = ProMix(Features(2), Features(2), 1, 2)  # one sample and two classes are enough
    assert smallest.ph1.head.out_features == smallest.ph2.head.out_features == 2
    assert {"sel1", "sel2"}.isdisjoint(smallest.state_dict())  # recomputed by every train pass, not checkpointed
    st = ProMix(Features(), Features(), 10, 3)  # the constructor's defaults are the official CIFAR-10 values
    assert st.rho_end == 0.5 and st._num_epochs == 0
    assert (st.pretrain_epochs, st.rampup_epochs, st.rho_start, st.tau, st.threshold, st.start_expand,
            st.debias_output, st.debias_pl, st.temperature, st.bias_momentum, st.penalty) == \
        (10, 50.0, 0.5, 0.99, 0.9, 250, 0.8, 0.8, 0.5, 0.9999, False)
    assert torch.equal(st.pi1, torch.full((3,), 1 / 3)) and st.ph1.head.out_features == 3


# ---- resume ------------------------------------------------------------------------------------

def _promix(seed, n):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=n)
    return create_strategy("promix", context=ctx, pretrain_epochs=1, rampup_epochs=2, start_expand=1, tau=0.9,
                           bias_momentum=0.9)


def test_fit_learns_and_resume_is_bit_exact(tmp_path):
    n = 96
    images, labels = _toy(n + 40)
    mean, std = (0.5,) * 3, (0.25,) * 3
    augment = MultiView(BatchAugment(AugmentConfig(crop_pad=1, flip=True), mean, std), ProMix.views)
    test = DeviceLoader(images[n:], labels[n:], 40, Normalize(mean, std), shuffle=False)
    whole = DeviceLoader(images[:n], labels[:n], 48, Normalize(mean, std), shuffle=False)
    cfg = TrainConfig(epochs=3, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    full = _promix(0, n)
    result = fit(full, DeviceLoader(images[:n], labels[:n], 32, augment, seed=0), cfg, test_loader=test,
                 run_dir=tmp_path / "full", quiet=True, num_classes=4, train_pass_loader=whole)
    assert result.metrics["test_acc"] > 0.5  # chance is 0.25
    assert {"test_net1_acc", "test_net2_acc", "test_ensemble_acc", "test_net1_ph_acc"} <= set(result.metrics)
    assert not torch.equal(full.pi1, torch.full((4,), 0.25))  # the distributions moved

    part = _promix(0, n)
    with pytest.raises(KeyboardInterrupt):
        fit(part, InterruptAt(images[:n], labels[:n], 32, augment, seed=0), cfg, test_loader=test,
            run_dir=tmp_path / "part", quiet=True, num_classes=4, train_pass_loader=whole)
    resumed = _promix(1, n)  # other weights, uniform distributions: the checkpoint must replace them all
    torch.manual_seed(123)
    fit(resumed, DeviceLoader(images[:n], labels[:n], 32, augment, seed=0), cfg, test_loader=test,
        run_dir=tmp_path / "part", resume=tmp_path / "part" / "last.pt", quiet=True, num_classes=4,
        train_pass_loader=whole)
    a, b = full.state_dict(), resumed.state_dict()
    assert {"pi1", "pi2", "pi1_unrel", "pi2_unrel", "ph1.head.weight", "ph2.head.bias"} <= set(a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- the noisy-label study on real data ---------------------------------------------------------

def test_runs_end_to_end_in_the_noisy_label_study(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    rows, record = run_tiny_study("promix", cifar10_dir, session_cache_dir, tmp_path / "study", 2,
                                  "--strategy-arg", "promix.pretrain_epochs=1")
    row = rows["noisy_promix"]
    assert row["headline"] == "ensemble"
    m = record["metrics"]
    assert float(row["test_acc_ensemble"]) == pytest.approx(m["test_ensemble_acc"])
    assert 0.0 <= m["test_net1_ph_acc"] <= 1.0 and 0.0 <= m["test_acc"] <= 1.0
    options = record["strategy_options"]
    assert (options["pretrain_epochs"], options["rampup_epochs"], options["start_expand"]) == (1, 6.0, 7)  # quick
    assert (options["rho_start"], options["tau"]) == (0.5, 0.99)
    first, second = record["history"]
    clean_share = 1 - record["noise"]["realized_rate"]
    assert first["label_recall"] == pytest.approx(1.0)  # the warm-up trains on every label
    assert first["label_precision"] == pytest.approx(clean_share, abs=1e-6)
    # CSS keeps ceil(200 / 10 * 0.5) = 10 per class; MHCS and LGA (the last 7 epochs) may add more
    assert second["label_recall"] < 1.0 and second["label_precision"] > 0.0
    assert second["promix_rho"] == 0.5 and math.isfinite(second["train_loss"])
