"""A sortable table of dict rows (numbers sort as numbers, not as text)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

SORT_ROLE = Qt.ItemDataRole.UserRole
NAME_ROLE = Qt.ItemDataRole.UserRole + 1
ROW_PADDING = 6  # px above and below a row's text


class SortItem(QTableWidgetItem):
    """A cell that sorts by its number (missing values last), else by its text."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.data(SORT_ROLE), other.data(SORT_ROLE)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a < b
        if isinstance(a, (int, float)) != isinstance(b, (int, float)):
            return isinstance(a, (int, float))
        return self.text() < other.text()


def format_value(value, digits: int = 3) -> str:
    """A short text for a table cell: numbers to ``digits`` significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, (list, tuple)):
        return " / ".join(format_value(v, digits) for v in value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        if value != 0 and (abs(value) >= 10 ** (digits + 2) or abs(value) < 10 ** -digits):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def sort_key(value):
    """The number a cell sorts by (the mean of a per-channel list), or None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        nums = [v for v in value if isinstance(v, (int, float)) and math.isfinite(v)]
        return sum(nums) / len(nums) if nums else None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


class RowTable(QTableWidget):
    """A read-only, sortable table filled from dict rows.

    Parameters
    ----------
    columns : sequence of (key, header, tooltip)
        Which row keys are shown, in order.
    """

    def __init__(self, columns: Sequence[tuple[str, str, str]], parent=None):
        super().__init__(0, len(columns), parent)
        self.columns = list(columns)
        for i, (_, header, tip) in enumerate(self.columns):
            item = QTableWidgetItem(header)
            item.setToolTip(tip)
            self.setHorizontalHeaderItem(i, item)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setSortingEnabled(True)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + ROW_PADDING)

    def fill(self, rows: Sequence[dict], name_key: str = "name",
             tooltips: dict[str, str] | None = None) -> None:
        """Replace the contents with ``rows`` (keeps the sort column and order)."""
        self.setSortingEnabled(False)
        self.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (key, _, _) in enumerate(self.columns):
                value = row.get(key)
                item = SortItem(format_value(value))
                item.setData(SORT_ROLE, sort_key(value))
                item.setData(NAME_ROLE, row.get(name_key))
                tip = (tooltips or {}).get(row.get(name_key))
                if tip:
                    item.setToolTip(tip)
                self.setItem(r, c, item)
        self.setSortingEnabled(True)
        self.resizeColumnsToContents()

    def names(self) -> list[str]:
        """The row names in the order shown."""
        return [self.item(r, 0).data(NAME_ROLE) for r in range(self.rowCount())]

    def column_values(self, key: str) -> list:
        """The sort values of one column in the order shown."""
        c = [k for k, _, _ in self.columns].index(key)
        return [self.item(r, c).data(SORT_ROLE) for r in range(self.rowCount())]

    def selected_name(self) -> str | None:
        """The name of the selected row, or None."""
        items = self.selectedItems()
        return items[0].data(NAME_ROLE) if items else None

    def select_name(self, name: str) -> None:
        """Select the row of ``name`` (if shown)."""
        for r, n in enumerate(self.names()):
            if n == name:
                self.selectRow(r)
                return
