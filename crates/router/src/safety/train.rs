//! Fitting a head: multinomial logistic regression with an L2 penalty on
//! standardised embeddings, by full-batch Adam (a few hundred examples of a
//! few hundred features each: seconds, deterministic, no dependency).

use super::{softmax, Head};

/// One labelled prompt: its embedding and its class index (0 = safe).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub embedding: Vec<f32>,
    pub class: usize,
}

/// Adam steps: enough for the loss to settle on standardised features.
const STEPS: usize = 400;
const LEARNING_RATE: f64 = 0.02;

/// Fits a head on `examples` (all of the same size, classes below
/// `classes.len()`); `l2` weighs the penalty against the mean cross-entropy.
pub fn fit(examples: &[Example], classes: &[String], l2: f64) -> Head {
    let dim = examples.first().map_or(0, |e| e.embedding.len());
    let n = examples.len().max(1) as f64;
    let mut mean = vec![0f64; dim];
    for e in examples {
        mean.iter_mut().zip(&e.embedding).for_each(|(m, v)| *m += f64::from(*v) / n);
    }
    let mut var = vec![0f64; dim];
    for e in examples {
        var.iter_mut().zip(e.embedding.iter().zip(&mean)).for_each(|(s, (v, m))| *s += (f64::from(*v) - m).powi(2) / n);
    }
    // A constant feature keeps scale 1: it standardises to 0 and never weighs.
    let scale: Vec<f64> = var.iter().map(|v| if *v > 1e-12 { v.sqrt() } else { 1.0 }).collect();
    let xs: Vec<Vec<f64>> = examples
        .iter()
        .map(|e| e.embedding.iter().zip(mean.iter().zip(&scale)).map(|(v, (m, s))| (f64::from(*v) - m) / s).collect())
        .collect();
    let k = classes.len();
    let mut w = vec![vec![0f64; dim]; k];
    let mut b = vec![0f64; k];
    let (mut mw, mut vw) = (vec![vec![0f64; dim]; k], vec![vec![0f64; dim]; k]);
    let (mut mb, mut vb) = (vec![0f64; k], vec![0f64; k]);
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8);
    for step in 1..=STEPS {
        let mut gw = vec![vec![0f64; dim]; k];
        let mut gb = vec![0f64; k];
        for (x, e) in xs.iter().zip(examples) {
            let logits: Vec<f64> =
                w.iter().zip(&b).map(|(row, bias)| bias + row.iter().zip(x).map(|(a, c)| a * c).sum::<f64>()).collect();
            let p = softmax(&logits);
            for c in 0..k {
                let err = (p[c] - f64::from(u8::from(c == e.class))) / n;
                gb[c] += err;
                gw[c].iter_mut().zip(x).for_each(|(g, v)| *g += err * v);
            }
        }
        let (c1, c2) = (1.0 - beta1.powi(step as i32), 1.0 - beta2.powi(step as i32));
        for c in 0..k {
            for d in 0..dim {
                let g = gw[c][d] + l2 * w[c][d];
                mw[c][d] = beta1 * mw[c][d] + (1.0 - beta1) * g;
                vw[c][d] = beta2 * vw[c][d] + (1.0 - beta2) * g * g;
                w[c][d] -= LEARNING_RATE * (mw[c][d] / c1) / ((vw[c][d] / c2).sqrt() + eps);
            }
            mb[c] = beta1 * mb[c] + (1.0 - beta1) * gb[c];
            vb[c] = beta2 * vb[c] + (1.0 - beta2) * gb[c] * gb[c];
            b[c] -= LEARNING_RATE * (mb[c] / c1) / ((vb[c] / c2).sqrt() + eps);
        }
    }
    Head {
        classes: classes.to_vec(),
        mean: mean.iter().map(|&m| m as f32).collect(),
        scale: scale.iter().map(|&s| s as f32).collect(),
        weights: w.iter().map(|row| row.iter().map(|&v| v as f32).collect()).collect(),
        bias: b,
    }
}

/// Each example's class probabilities from a head fitted without it
/// (`folds`-fold, by index): the scores a threshold is picked on, since a
/// head's scores of its own training examples are overconfident.
pub fn out_of_fold(examples: &[Example], classes: &[String], l2: f64, folds: usize) -> Vec<Vec<f64>> {
    let k = folds.clamp(2, examples.len().max(2));
    let mut out = vec![Vec::new(); examples.len()];
    for fold in 0..k {
        let train: Vec<Example> =
            examples.iter().enumerate().filter(|(i, _)| i % k != fold).map(|(_, e)| e.clone()).collect();
        let head = fit(&train, classes, l2);
        for (i, e) in examples.iter().enumerate().skip(fold).step_by(k) {
            out[i] = head.probabilities(&e.embedding).unwrap_or_default();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes in two dimensions: safe near the origin, the unsafe
    /// ones far out along each axis; a third, constant feature.
    fn blobs() -> Vec<Example> {
        (0..60)
            .map(|i| {
                let class = i % 3;
                let jitter = ((i * 7919) % 13) as f32 / 13.0 - 0.5;
                let (x, y) = match class {
                    0 => (jitter, -jitter),
                    1 => (4.0 + jitter, jitter),
                    _ => (jitter, 4.0 - jitter),
                };
                Example { embedding: vec![x, y, 1.0], class }
            })
            .collect()
    }

    fn classes() -> Vec<String> {
        vec!["safe".into(), "a".into(), "b".into()]
    }

    #[test]
    fn separable_classes_are_learnt_and_held_out_scores_agree() {
        let data = blobs();
        let head = fit(&data, &classes(), 1e-3);
        for e in &data {
            let p = head.probabilities(&e.embedding).unwrap();
            let best = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
            assert_eq!(best, e.class, "{e:?}: {p:?}");
        }
        assert_eq!(head.verdict(&[0.0, 4.0, 1.0]).unwrap().category, "b");
        let oof = out_of_fold(&data, &classes(), 1e-3, 5);
        let right = oof.iter().zip(&data).filter(|(p, e)| p[e.class] > 0.5).count();
        assert!(right >= 57, "held-out predictions of separable blobs: {right}/60");
        assert_eq!(fit(&data, &classes(), 1e-3), head, "deterministic");
    }

    #[test]
    fn a_stronger_penalty_makes_a_less_certain_head() {
        let data = blobs();
        let sure = fit(&data, &classes(), 1e-3).probabilities(&[4.0, 0.0, 1.0]).unwrap()[1];
        let shy = fit(&data, &classes(), 10.0).probabilities(&[4.0, 0.0, 1.0]).unwrap()[1];
        assert!(sure > shy && shy > 1.0 / 3.0, "{sure} vs {shy}");
    }
}
