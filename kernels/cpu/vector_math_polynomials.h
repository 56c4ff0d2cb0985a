// The approximations that the vectorized float math of every wide path evaluates
// (vector_math_avx512.h with sgemm_avx512.cpp, vector_math_avx2.h): each path runs the same
// steps on its own registers, so they round alike up to the ISA's own instructions.
// Coefficients go from the highest power down, for Horner's rule.
#pragma once

namespace nimbus::kernels::polynomials {

// exp(x) = 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2] (Cephes expf):
//     p(r) = 1 + r + r^2 * kExp(r), within about 2 ulp.
inline constexpr float kExp[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
inline constexpr float kExpClampLow = -87.3f;   // exp underflows past these
inline constexpr float kExpClampHigh = 88.3f;
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2High = 0.693359375f;  // ln 2 in two parts, exact products with n
inline constexpr float kLn2Low = -2.12194440e-4f;

// The u8 softmax weights of the integer attention (qattention.h), code = rint(255 exp(t)) for
// t = x - max <= 0: u = max(t, kCodeFloor) * kLog2e, n = rint(u), f = u - n (exact), and
//     code = rint(2^n * p(f)),  p(f) = (((kCode[0] f + kCode[1]) f + kCode[2]) f + kCode[3]) f + kCode[4],
// p the Taylor polynomial of 255 * 2^f (|f| <= 1/2: within 0.01 of it), each multiply and add
// rounded to float32 on its own (no FMA), so that numpy repeats it. p(0) = 255, and p grows
// with f, so codes stay within [0, 255].
inline constexpr float kCode[] = {2.452622890472412f, 14.153547286987305f, 61.25775909423828f,
                                  176.75253295898438f, 255.0f};
inline constexpr float kCodeFloor = -17.0f;  // 255 * exp(-17) rounds to 0

// erf(x) = x * kErfP(x^2) / kErfQ(x^2) for |x| <= kErfBound, the rational fit that the
// runtime's numpy erf evaluates (cpu_ops/elementwise.py: |error| below 1.6e-9 on [-4, 4]),
// its coefficients divided by 16^i for powers of x^2 instead of (x / 4)^2. |erf| rounds to 1 in
// float32 beyond the bound (erfc(4) = 1.5e-8); no exp and one division, against the exp and
// division of Abramowitz and Stegun 7.1.26 (absolute error 1.5e-7) before.
inline constexpr float kErfBound = 4.0f;
inline constexpr float kErfP[] = {-1.3665473191445876e-08f, 4.780220046564945e-06f,
                                  0.00038268805881811553f,  0.003839791903120164f,
                                  0.054333290674489464f,    0.18471731507435635f,
                                  1.1283791820062983f};
inline constexpr float kErfQ[] = {6.40064528552232e-05f, 0.0013096283962502986f,
                                  0.015454016497308005f, 0.11382898552950399f,
                                  0.49703500254213145f,  1.0f};

// tanh(x) = x + x^3 * kTanh(x^2) below |x| = kTanhSmall (Cephes tanhf), where
// 1 - 2 / (exp(2|x|) + 1) would cancel; that form above it.
inline constexpr float kTanhSmall = 0.625f;
inline constexpr float kTanh[] = {-5.70498872745e-3f, 2.06390887954e-2f, -5.37397155531e-2f,
                                  1.33314422036e-1f, -3.33332819422e-1f};

// gelu(x) = x * (1 + erf(x / sqrt 2)) / 2; gelu_tanh with tanh(sqrt(2 / pi) (x + c x^3)).
inline constexpr float kSqrtHalf = 0.70710678118654752f;
inline constexpr float kSqrtTwoOverPi = 0.79788456080286536f;
inline constexpr float kGeluTanhCubic = 0.044715f;

}  // namespace nimbus::kernels::polynomials
