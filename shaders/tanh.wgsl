// tanh to about an ulp, appended to the shaders that soft-cap or gate with it (geglu, softcap,
// attention_decode, attention_prefill). Not the builtin: implementations compute it as
// (e^2v - 1) / (e^2v + 1), a few ulps off and NaN once e^2v overflows, and GELU's 1 + tanh(v)
// for negative v keeps only the digits tanh gets right near -1. Here |v| >= 0.625 takes
// 1 - 2 / (e^2|v| + 1), whose error near +-1 is far below an ulp of 1, and smaller |v|
// Cephes's tanhf polynomial; past 10, +-1 (f32's tanh rounds to it there). NaN stays NaN.
fn tanh_f32(v: f32) -> f32 {
    let a = abs(v);
    if a > 10.0 {
        return sign(v);
    }
    if a >= 0.625 {
        return sign(v) * (1.0 - 2.0 / (exp(2.0 * a) + 1.0));
    }
    let z = v * v;
    let poly = (((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
        + 1.33314422036e-1) * z - 3.33332819422e-1;
    return v + v * z * poly;
}
