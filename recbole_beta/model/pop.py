r"""
Pop
################################################
RecBole's Pop with popularity counted as its name says: how many training interactions each item has.

RecBole 1.2.1's ``Pop.calculate_loss`` adds 1 with ``item_cnt[item] = item_cnt[item] + 1``, which
counts an item once per batch however often the batch holds it (a duplicate index is written, not
summed), and it trains on RecBole's negative samples too, counting random items as if consumed.
On ml-100k that ranks items by how many batches of 2,048 rows they appear in, plus noise. This
class keeps RecBole's model (same name, attributes, prediction and checkpoint contents) and
changes only the count; ``properties/model/Pop.yaml`` turns negative sampling off.
"""

from recbole.model.general_recommender import Pop as RecBolePop


class Pop(RecBolePop):
    r"""Most popular items first: popularity = the item's number of training interactions."""

    def calculate_loss(self, interaction):
        # RecBole's Pop.calculate_loss, with index_add_ so that every occurrence counts
        item = interaction[self.ITEM_ID]
        self.item_cnt.index_add_(0, item, self.item_cnt.new_ones(len(item), 1))
        self.max_cnt = self.item_cnt.max(dim=0)[0]
        return self.fake_loss * 0  # the trainer steps an optimizer: give it a zero loss, as RecBole does
