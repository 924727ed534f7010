"""Classical sparse-view CT reconstruction: the baselines the learned X-ray -> CT models must beat.

From a PA + lateral radiograph pair (or any handful of C-arm views) of line integrals of mu, solve
``A x = y`` for the attenuation volume ``x`` (1/mm) on a chosen voxel grid, where ``A`` is
:class:`ProjectionOperator`: exactly the trilinear ray-marching model of
:func:`xraycardiac.projection.ray_integrals`, i.e. the physics of the DRRs the networks are trained
on. With two views the system is hugely under-determined (2 x H x W equations for K x J x I
unknowns), so these baselines show what the data alone pins down; :func:`mean_prior` is the other
trivial baseline, the voxel-wise mean of the training CTs, which ignores the data.

Solvers:

* :func:`sart` -- Simultaneous Algebraic Reconstruction Technique (Andersen & Kak, 1984) with the
  usual normalisation by ray sums ``A 1`` and voxel sums ``A^T 1``. ``order="sequential"`` is
  Andersen & Kak's original scheme: one sub-iteration per view, views in the given order;
  ``order="simultaneous"`` updates from all views at once (a SIRT-like Landweber step with SART
  weights), slower per iteration but independent of the view order. Optional non-negativity.
* :func:`cgls` -- conjugate gradients on the normal equations ``(A^T A + damping^2 I) x = A^T y``
  (Hestenes & Stiefel's CGLS), i.e. damped (Tikhonov) least squares; no positivity.

The adjoint ``A^T`` is the exact transpose of the discretised forward model (not a separately
discretised backprojector): it is the vector-Jacobian product of the linear forward pass through
``torch.autograd``, so the trilinear weights are scattered back exactly. This costs one forward plus
one backward pass per adjoint; fine for baselines on CT grids up to ~128^3.

Units: x in 1/mm, y unitless (line integral of mu), ray sums ``A 1`` in mm. HU <-> mu follows
:func:`xraycardiac.projection.hu_to_mu` (``mu = mu_water (1 + HU / 1000)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from xraycardiac.geometry import CArmGeometry
from xraycardiac.projection.drr import MU_WATER_PER_MM, hu_to_mu, ray_integrals
from xraycardiac.volume import Volume

__all__ = [
    "ProjectionOperator",
    "cgls",
    "mean_prior",
    "mu_to_hu",
    "reconstruct_sparse_view",
    "sart",
]

_METHODS = ("sart", "cgls")
_ORDERS = ("sequential", "simultaneous")
# ray sums / voxel sums below this fraction of their maximum count as "not hit" (SART skips them)
_HIT_FRACTION = 1e-6


def mu_to_hu(mu: np.ndarray | torch.Tensor, mu_water_per_mm: float = MU_WATER_PER_MM):
    """Hounsfield units from linear attenuation (1/mm): the inverse of ``hu_to_mu``, floored at -1000.

    ``hu_to_mu`` clips at mu = 0 (air), so a negative mu (which least squares can produce) has no
    HU of its own and maps to -1000 HU.
    """
    if isinstance(mu, torch.Tensor):
        return (1000.0 * (mu / mu_water_per_mm - 1.0)).clamp_min(-1000.0)
    return np.clip(1000.0 * (np.asarray(mu, dtype=np.float32) / mu_water_per_mm - 1.0), -1000.0, None)


def _check_n_iter(n_iter: int) -> None:
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter <= 0:
        raise ValueError(f"n_iter: expected a positive integer, got {n_iter!r}")


def _check_grid_shape(grid_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(grid_shape)
    if len(shape) != 3 or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 2 for n in shape
    ):
        raise ValueError(f"grid_shape: expected three integers >= 2 (K, J, I), got {grid_shape!r}")
    return tuple(int(n) for n in shape)  # type: ignore[return-value]


class ProjectionOperator:
    """The linear map ``A``: attenuation volume (1/mm) -> stacked line integrals, one image per view.

    ``A`` is :func:`~xraycardiac.projection.ray_integrals` applied view by view, so its rows are
    the same trilinear midpoint-rule ray sums as :func:`~xraycardiac.projection.render_drr`
    (``render_drr`` additionally crops the CT to its non-air box before marching, which moves the
    sample points slightly; on a volume without air at its border the two agree to float precision).

    Args:
        grid_shape: (K, J, I) voxels of the reconstruction grid.
        ijk_to_ras: (4, 4) voxel index (i, j, k) -> RAS mm of that grid.
        geometries: the V C-arm views. Without ``detector_shape`` all must have the same detector
            rows and columns.
        detector_shape: (H, W) pixels to project onto; each geometry is rebinned to it keeping its
            physical detector extent (pixel spacing scaled by old / new pixel count), which matches
            block-averaging the radiograph. None keeps the geometries' own detectors.
        step_mm: sample spacing along rays in mm; None = half the smallest voxel spacing (as
            ``render_drr``).
        max_samples_per_chunk: memory bound passed to ``ray_integrals``.
        device: torch device the operator works on.
        dtype: torch float dtype of volumes and projections.
    """

    def __init__(
        self,
        grid_shape: Sequence[int],
        ijk_to_ras: np.ndarray,
        geometries: Sequence[CArmGeometry],
        detector_shape: tuple[int, int] | None = None,
        step_mm: float | None = None,
        max_samples_per_chunk: int = 2_000_000,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.grid_shape = _check_grid_shape(grid_shape)
        m = np.asarray(ijk_to_ras, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise ValueError(f"ijk_to_ras: expected a finite, invertible 4x4 matrix, got shape {m.shape}")
        self.ijk_to_ras = m
        geos = list(geometries)
        if not geos or not all(isinstance(g, CArmGeometry) for g in geos):
            raise ValueError("geometries: expected a non-empty sequence of CArmGeometry")
        if detector_shape is not None:
            if len(detector_shape) != 2 or not all(isinstance(n, int) and n > 0 for n in detector_shape):
                raise ValueError(
                    f"detector_shape: expected (rows, cols) positive integers, got {detector_shape!r}"
                )
            rows, cols = detector_shape
            geos = [
                g.with_(
                    detector_rows=rows,
                    detector_cols=cols,
                    pixel_spacing_mm=(
                        g.pixel_spacing_mm[0] * g.detector_rows / rows,
                        g.pixel_spacing_mm[1] * g.detector_cols / cols,
                    ),
                )
                for g in geos
            ]
        sizes = {(g.detector_rows, g.detector_cols) for g in geos}
        if len(sizes) != 1:
            raise ValueError(
                f"geometries: all views must share one detector size to stack, got {sorted(sizes)}; "
                "pass detector_shape to rebin them"
            )
        self.geometries: tuple[CArmGeometry, ...] = tuple(geos)
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        step = float(spacing.min()) / 2.0 if step_mm is None else float(step_mm)
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step_mm: expected a finite value > 0 mm or None, got {step_mm!r}")
        self.step_mm = step
        self.max_samples_per_chunk = int(max_samples_per_chunk)
        self.device = torch.device(device)
        self.dtype = dtype
        self._row_sums: torch.Tensor | None = None
        self._col_sums: dict[int | None, torch.Tensor] = {}

    # ---- shapes -----------------------------------------------------------------------------------

    @property
    def n_views(self) -> int:
        """Number of views V."""
        return len(self.geometries)

    @property
    def detector_shape(self) -> tuple[int, int]:
        """(H, W) detector pixels shared by all views."""
        g = self.geometries[0]
        return g.detector_rows, g.detector_cols

    @property
    def shape_out(self) -> tuple[int, int, int]:
        """(V, H, W): shape of ``A x``."""
        return (self.n_views, *self.detector_shape)

    def _volume(self, x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
        x = torch.as_tensor(x).to(device=self.device, dtype=self.dtype)
        if tuple(x.shape) != self.grid_shape:
            raise ValueError(f"{name}: expected a volume of shape {self.grid_shape}, got {tuple(x.shape)}")
        return x

    def _check_view(self, view: int) -> None:
        if not 0 <= view < self.n_views:
            raise ValueError(f"view: expected an index in [0, {self.n_views}), got {view}")

    # ---- the operator -----------------------------------------------------------------------------

    def forward_view(self, x: torch.Tensor | np.ndarray, view: int) -> torch.Tensor:
        """``A_v x``: line integrals (unitless) of a (K, J, I) mu volume (1/mm) for one view -> (H, W)."""
        self._check_view(view)
        x = self._volume(x, "x")
        g = self.geometries[view]
        return ray_integrals(x[None], self.ijk_to_ras, g, self.step_mm, self.max_samples_per_chunk)[0]

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``A x``: (K, J, I) mu volume (1/mm) -> (V, H, W) line integrals (unitless)."""
        x = self._volume(x, "x")
        return torch.stack([self.forward_view(x, v) for v in range(self.n_views)])

    __call__ = forward

    def adjoint_view(self, y_view: torch.Tensor | np.ndarray, view: int) -> torch.Tensor:
        """``A_v^T y_v``: (H, W) image -> (K, J, I) volume, the exact transpose of :meth:`forward_view`."""
        self._check_view(view)
        y = torch.as_tensor(y_view).to(device=self.device, dtype=self.dtype)
        if tuple(y.shape) != self.detector_shape:
            raise ValueError(
                f"y_view: expected an image of shape {self.detector_shape}, got {tuple(y.shape)}"
            )
        # A_v is linear, so its vector-Jacobian product at any point (here 0) is A_v^T y
        x = torch.zeros(self.grid_shape, dtype=self.dtype, device=self.device, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.forward_view(x, view), x, grad_outputs=y)
        return g

    def adjoint(self, y: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``A^T y``: (V, H, W) stack -> (K, J, I) volume, the exact transpose of :meth:`forward`."""
        y = torch.as_tensor(y).to(device=self.device, dtype=self.dtype)
        if tuple(y.shape) != self.shape_out:
            raise ValueError(f"y: expected a view stack of shape {self.shape_out}, got {tuple(y.shape)}")
        out = self.adjoint_view(y[0], 0)
        for v in range(1, self.n_views):
            out += self.adjoint_view(y[v], v)
        return out

    def row_sums(self) -> torch.Tensor:
        """``A 1``: (V, H, W) length in mm of each ray inside the grid (cached)."""
        if self._row_sums is None:
            with torch.no_grad():
                self._row_sums = self.forward(
                    torch.ones(self.grid_shape, dtype=self.dtype, device=self.device)
                )
        return self._row_sums

    def col_sums(self, view: int | None = None) -> torch.Tensor:
        """``A^T 1`` (or ``A_v^T 1`` for one view): (K, J, I) total ray weight per voxel, in mm (cached)."""
        if view not in self._col_sums:
            if view is None:
                ones = torch.ones(self.shape_out, dtype=self.dtype, device=self.device)
                self._col_sums[None] = self.adjoint(ones)
            else:
                ones = torch.ones(self.detector_shape, dtype=self.dtype, device=self.device)
                self._col_sums[view] = self.adjoint_view(ones, view)
        return self._col_sums[view]


# ---- solvers ----------------------------------------------------------------------------------------


def _inverse_where_hit(s: torch.Tensor) -> torch.Tensor:
    """1 / s where s is a real hit (> a tiny fraction of its max), 0 elsewhere."""
    hit = s > _HIT_FRACTION * float(s.max().clamp_min(torch.finfo(s.dtype).tiny))
    return torch.where(hit, 1.0 / torch.where(hit, s, torch.ones_like(s)), torch.zeros_like(s))


def _measurements(A: ProjectionOperator, y: torch.Tensor | np.ndarray) -> torch.Tensor:
    y = torch.as_tensor(y).to(device=A.device, dtype=A.dtype)
    if tuple(y.shape) != A.shape_out:
        raise ValueError(f"y: expected a view stack of shape {A.shape_out} (V, H, W), got {tuple(y.shape)}")
    return y


def _start(A: ProjectionOperator, x0: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    if x0 is None:
        return torch.zeros(A.grid_shape, dtype=A.dtype, device=A.device)
    return A._volume(x0, "x0").detach().clone()


def sart(
    A: ProjectionOperator,
    y: torch.Tensor | np.ndarray,
    n_iter: int,
    relaxation: float = 1.0,
    x0: torch.Tensor | np.ndarray | None = None,
    nonneg: bool = True,
    callback: Callable[[int, torch.Tensor], bool | None] | None = None,
    order: str = "sequential",
) -> torch.Tensor:
    """SART (Andersen & Kak 1984): ``x += relaxation * C^-1 A_S^T R^-1 (y_S - A_S x)``.

    ``R = diag(A_S 1)`` (ray lengths, mm) and ``C = diag(A_S^T 1)`` (voxel weights, mm) for the view
    set ``S`` of a sub-iteration; rays or voxels that ``A`` does not hit are left out (weight 0).
    With ``order="sequential"`` (Andersen & Kak's original) ``S`` is one view and one iteration is
    V sub-iterations in the views' order; with ``order="simultaneous"`` ``S`` is all views.

    Args:
        A: the projection operator.
        y: (V, H, W) measured line integrals (unitless).
        n_iter: number of full passes over the views, > 0.
        relaxation: step factor lambda in (0, 2); 1 is the classical choice.
        x0: (K, J, I) starting mu volume (1/mm); zeros if None.
        nonneg: clamp x at 0 after every sub-iteration (mu >= 0 is physical).
        callback: called as ``callback(iteration, x)`` after each pass (iteration from 1); returning
            True stops early.
        order: "sequential" or "simultaneous" (see above).

    Returns:
        (K, J, I) mu volume (1/mm), on ``A.device`` with ``A.dtype``.
    """
    _check_n_iter(n_iter)
    if not (math.isfinite(relaxation) and 0.0 < relaxation < 2.0):
        raise ValueError(f"relaxation: expected a value in (0, 2), got {relaxation!r}")
    if order not in _ORDERS:
        raise ValueError(f"order: expected one of {_ORDERS}, got {order!r}")
    y = _measurements(A, y)
    x = _start(A, x0)
    if nonneg:
        x.clamp_(min=0.0)
    inv_rows = _inverse_where_hit(A.row_sums())
    if order == "sequential":
        inv_cols = [_inverse_where_hit(A.col_sums(v)) for v in range(A.n_views)]
    else:
        inv_col = _inverse_where_hit(A.col_sums())
    with torch.no_grad():
        for it in range(1, n_iter + 1):
            if order == "sequential":
                for v in range(A.n_views):
                    r = (y[v] - A.forward_view(x, v)) * inv_rows[v]
                    x.add_(A.adjoint_view(r, v) * inv_cols[v], alpha=relaxation)
                    if nonneg:
                        x.clamp_(min=0.0)
            else:
                r = (y - A.forward(x)) * inv_rows
                x.add_(A.adjoint(r) * inv_col, alpha=relaxation)
                if nonneg:
                    x.clamp_(min=0.0)
            if callback is not None and callback(it, x):
                break
    return x


def cgls(
    A: ProjectionOperator,
    y: torch.Tensor | np.ndarray,
    n_iter: int,
    x0: torch.Tensor | np.ndarray | None = None,
    damping: float = 0.0,
) -> tuple[torch.Tensor, list[float]]:
    """CGLS: conjugate gradients for ``min ||A x - y||^2 + damping^2 ||x||^2``.

    Each iterate minimises that objective over ``x0`` + the Krylov space of ``A^T A``, so the
    reported residual norm never increases. Stops early when the normal-equation residual vanishes.

    Args:
        A: the projection operator.
        y: (V, H, W) measured line integrals (unitless).
        n_iter: maximum number of CG iterations, > 0.
        x0: (K, J, I) starting mu volume (1/mm); zeros if None.
        damping: Tikhonov weight (>= 0, unit mm: it scales ``x`` in 1/mm to the unitless data).

    Returns:
        ``(x, history)``: the (K, J, I) mu volume (1/mm) and the residual norms
        ``sqrt(||y - A x||^2 + damping^2 ||x||^2)`` at the start and after each iteration
        (length ``iterations run + 1``; just ``||y - A x||`` when ``damping`` is 0).
    """
    _check_n_iter(n_iter)
    if not (math.isfinite(damping) and damping >= 0.0):
        raise ValueError(f"damping: expected a finite value >= 0, got {damping!r}")
    y = _measurements(A, y)
    x = _start(A, x0)
    d2 = float(damping) ** 2
    with torch.no_grad():
        r = y - A.forward(x)
        s = A.adjoint(r) - d2 * x
        p = s.clone()
        gamma = float((s * s).sum())
        history = [math.sqrt(float((r * r).sum()) + d2 * float((x * x).sum()))]
        for _ in range(n_iter):
            if gamma == 0.0:
                break
            q = A.forward(p)
            denom = float((q * q).sum()) + d2 * float((p * p).sum())
            if denom == 0.0:
                break
            alpha = gamma / denom
            x.add_(p, alpha=alpha)
            r.sub_(q, alpha=alpha)
            s = A.adjoint(r) - d2 * x
            gamma_new = float((s * s).sum())
            p = s + (gamma_new / gamma) * p
            gamma = gamma_new
            history.append(math.sqrt(float((r * r).sum()) + d2 * float((x * x).sum())))
    return x, history


# ---- end-to-end -------------------------------------------------------------------------------------


def reconstruct_sparse_view(
    views: np.ndarray,
    geometries: Sequence[CArmGeometry],
    grid_shape: Sequence[int],
    ijk_to_ras: np.ndarray,
    method: str = "sart",
    n_iter: int = 20,
    *,
    relaxation: float = 1.0,
    order: str = "sequential",
    nonneg: bool = True,
    damping: float = 0.0,
    initial_hu: np.ndarray | None = None,
    step_mm: float | None = None,
    mu_water_per_mm: float = MU_WATER_PER_MM,
    device: str = "cpu",
) -> Volume:
    """Reconstruct a CT (HU) on a given grid from a few views of line integrals.

    Args:
        views: (V, H, W) line integrals of mu (unitless), e.g. stacked ``render_drr(...).array[0]``,
            view v taken with ``geometries[v]``.
        geometries: the V C-arm views; each detector must be H x W pixels.
        grid_shape: (K, J, I) voxels of the output grid.
        ijk_to_ras: (4, 4) voxel index (i, j, k) -> RAS mm of the output grid.
        method: "sart" (:func:`sart`, uses ``relaxation``, ``order``, ``nonneg``) or "cgls"
            (:func:`cgls`, uses ``damping``).
        n_iter: iterations (SART: passes over all views), > 0.
        relaxation: SART step in (0, 2).
        order: SART "sequential" (view by view) or "simultaneous".
        nonneg: SART keeps mu >= 0.
        damping: CGLS Tikhonov weight >= 0.
        initial_hu: optional (K, J, I) HU start, e.g. :func:`mean_prior`'s array; air (mu = 0) if None.
        step_mm: ray sample spacing in mm; None = half the smallest voxel spacing.
        mu_water_per_mm: attenuation of water used for HU <-> mu (the DRRs' value).
        device: torch device string.

    Returns:
        The CT in HU, (K, J, I) float32 on ``ijk_to_ras``; HU below -1000 (mu < 0, possible with
        CGLS) is floored at -1000. ``meta`` holds the method, its parameters, the views' geometry
        and the relative residual ``||A x - y|| / ||y||``.
    """
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    _check_n_iter(n_iter)
    geos = list(geometries)
    arr = np.asarray(views, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"views: expected a (V, H, W) stack of line-integral images, got shape {arr.shape}")
    if arr.shape[0] != len(geos):
        raise ValueError(
            f"geometries: got {len(geos)} geometries for {arr.shape[0]} views; expected one per view"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("views: contains NaN or infinite values")
    if not (math.isfinite(mu_water_per_mm) and mu_water_per_mm > 0):
        raise ValueError(f"mu_water_per_mm: expected a finite value > 0, got {mu_water_per_mm!r}")
    A = ProjectionOperator(grid_shape, ijk_to_ras, geos, step_mm=step_mm, device=device)
    if arr.shape != A.shape_out:
        raise ValueError(
            f"views: expected shape {A.shape_out} (V, detector rows, detector cols), got {arr.shape}"
        )
    x0 = None
    if initial_hu is not None:
        hu = np.asarray(initial_hu, dtype=np.float32)
        if hu.shape != A.grid_shape:
            raise ValueError(f"initial_hu: expected shape {A.grid_shape}, got {hu.shape}")
        x0 = hu_to_mu(hu, mu_water_per_mm)
    y = torch.as_tensor(arr, device=A.device)
    params: dict[str, object] = {"method": method, "n_iter": int(n_iter)}
    if method == "sart":
        x = sart(A, y, n_iter, relaxation, x0=x0, nonneg=nonneg, order=order)
        params.update(relaxation=float(relaxation), order=order, nonneg=bool(nonneg))
    else:
        x, history = cgls(A, y, n_iter, x0=x0, damping=damping)
        params.update(damping=float(damping), iterations_run=len(history) - 1)
    with torch.no_grad():
        y_norm = float(torch.linalg.vector_norm(y))
        res = float(torch.linalg.vector_norm(A.forward(x) - y)) / max(y_norm, 1e-30)
    hu_out = mu_to_hu(x.detach().cpu().numpy(), mu_water_per_mm).astype(np.float32)
    return Volume(
        array=hu_out,
        ijk_to_ras=A.ijk_to_ras.copy(),
        meta={
            "kind": "sparse_view_reconstruction",
            "quantity": "HU",
            **params,
            "n_views": len(geos),
            "initial": "initial_hu" if initial_hu is not None else "air",
            "relative_residual": res,
            "step_mm": A.step_mm,
            "mu_water_per_mm": float(mu_water_per_mm),
            "geometries": [{k: v for k, v in g.to_dict().items() if k != "extra"} for g in geos],
        },
    )


def mean_prior(volumes: Sequence[Volume]) -> Volume:
    """The voxel-wise mean of training CTs on one grid: the data-free baseline.

    Args:
        volumes: CTs in HU, all with the same (K, J, I) shape and ``ijk_to_ras`` (to 1e-6 mm).

    Returns:
        Their mean (float32 HU) on that grid; ``meta["n_volumes"]`` says how many were averaged.
    """
    vols = list(volumes)
    if not vols:
        raise ValueError("volumes: expected at least one Volume, got none")
    ref = vols[0]
    total = np.zeros(ref.array.shape, dtype=np.float64)
    for n, vol in enumerate(vols):
        if not isinstance(vol, Volume):
            raise ValueError(f"volumes[{n}]: expected a Volume, got {type(vol).__name__}")
        if vol.array.shape != ref.array.shape:
            raise ValueError(
                f"volumes[{n}]: shape {vol.array.shape} differs from volumes[0]'s {ref.array.shape}; "
                "resample onto a common grid first"
            )
        if not np.allclose(vol.ijk_to_ras, ref.ijk_to_ras, rtol=0.0, atol=1e-6):
            raise ValueError(
                f"volumes[{n}]: ijk_to_ras differs from volumes[0]'s; resample onto a common grid first"
            )
        total += vol.array
    return Volume(
        array=(total / len(vols)).astype(np.float32),
        ijk_to_ras=ref.ijk_to_ras.copy(),
        meta={"kind": "mean_prior", "quantity": "HU", "n_volumes": len(vols)},
    )
